"""Scoring in row chunks, and on a Dask cluster, decides exactly what scoring the whole batch decides."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import make_frame

from poisonguard import ROW_ID
from poisonguard.config import ScanConfig
from poisonguard.errors import ConfigError
from poisonguard.score.rows import score_rows
from poisonguard.write.outputs import OutputPaths

TIMESTAMPS = ["_scanned_at", "_quarantined_at"]  # when each run wrote its rows


def _kinds() -> dict[str, str]:
    return {"x1": "numeric", "x2": "numeric", "count": "numeric", "colour": "categorical"}


def _poisoned_batch() -> pd.DataFrame:
    batch = make_frame(900, seed=1)
    batch.loc[:19, "x2"] = np.linspace(20.0, 40.0, 20)  # outliers
    batch.loc[20:39, "label"] = np.where(batch.loc[20:39, "label"] == "yes", "no", "yes")  # flipped labels
    return batch.assign(**{ROW_ID: np.arange(len(batch))})


@pytest.mark.parametrize("chunk_rows", [1, 37, 450])
def test_scoring_in_chunks_equals_scoring_the_whole_batch(chunk_rows):
    reference, batch = make_frame(1200, seed=0), _poisoned_batch()
    detectors = ("ecod", "iforest", "label_model", "spectral")  # spectral sees the whole batch at once
    whole = score_rows(batch, reference, _kinds(), "label", ScanConfig(detectors=detectors))
    chunked = score_rows(batch, reference, _kinds(), "label",
                         ScanConfig(detectors=detectors, score_chunk_rows=chunk_rows))
    for name in detectors:
        # A matrix product over 1 row and over 450 may round the last bit differently (BLAS picks its
        # kernel by shape); nothing more may differ, and no decision.
        np.testing.assert_allclose(chunked.scores[name], whole.scores[name], rtol=1e-12, atol=0)
        np.testing.assert_array_equal(whole.flags[name], chunked.flags[name])
    assert whole.calibration == chunked.calibration
    assert np.logical_or.reduce(list(whole.flags.values()))[:40].mean() > 0.9  # the poison is found


def test_dask_settings_are_checked():
    with pytest.raises(ConfigError, match="task_runner"):
        ScanConfig(task_runner="spark")
    with pytest.raises(ConfigError, match="--task-runner dask"):
        ScanConfig(dask_address="tcp://127.0.0.1:8786")
    with pytest.raises(ConfigError, match="dask_workers"):
        ScanConfig(task_runner="dask", dask_workers=0)


def test_dask_runner_uses_thread_workers_when_prefect_is_ephemeral(monkeypatch):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from poisonguard.flows.runners import task_runner_for

    assert task_runner_for(ScanConfig().execution) is None
    with temporary_settings(updates={PREFECT_API_URL: None}):
        runner = task_runner_for(ScanConfig(task_runner="dask", dask_workers=2).execution)
    assert runner.cluster_kwargs == {"n_workers": 2, "threads_per_worker": 1, "processes": False}
    with temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:4200/api"}):
        assert task_runner_for(ScanConfig(task_runner="dask").execution).cluster_kwargs["processes"] is True
    existing = task_runner_for(ScanConfig(task_runner="dask", dask_address="tcp://10.0.0.5:8786").execution)
    assert existing.address == "tcp://10.0.0.5:8786"


def _outputs(out_dir, summary) -> tuple[pd.DataFrame, pd.DataFrame]:
    paths = OutputPaths.for_batch(out_dir, summary.dataset, summary.batch_id)
    return (pd.read_parquet(paths.clean).sort_values(ROW_ID, ignore_index=True),
            pd.read_parquet(paths.quarantine).sort_values(ROW_ID, ignore_index=True))


def test_scan_on_a_local_dask_cluster_matches_the_default_runner(prefect_harness, tmp_path, sample_batch,
                                                                  sample_reference):
    """Whole on the default runner, whole on Dask, and chunked on Dask: one path, the same rows out."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName

    from poisonguard.flows.scan import run_scan

    # Only detectors that score rows one by one: chunks then see the same models as the whole batch.
    settings = dict(label_col="risk_grade", dataset="loans", reference=sample_reference,
                    suite_dir=tmp_path / "no-suites", score_chunk_rows=500,
                    detectors=("ecod", "iforest", "label_model"))
    default = run_scan(sample_batch, ScanConfig(out_dir=tmp_path / "default", **settings))
    on_dask = run_scan(sample_batch, ScanConfig(out_dir=tmp_path / "dask", task_runner="dask", dask_workers=2,
                                                **settings))

    chunked = run_scan(sample_batch, ScanConfig(out_dir=tmp_path / "chunked-dask", task_runner="dask",
                                                dask_workers=2, chunk_rows=700, **settings))

    for scan, out in ((on_dask, "dask"), (chunked, "chunked-dask")):
        assert (scan.rows_clean, scan.rows_quarantined) == (default.rows_clean, default.rows_quarantined)
        for ours, theirs in zip(_outputs(tmp_path / out, scan), _outputs(tmp_path / "default", default)):
            pd.testing.assert_frame_equal(ours.drop(columns=TIMESTAMPS, errors="ignore"),
                                          theirs.drop(columns=TIMESTAMPS, errors="ignore"), check_dtype=out == "dask")
    with get_client(sync_client=True) as client:
        slice_runs = client.read_task_runs(task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_="score-slice")))
    # 2,000 rows in slices of 500 whole (4), and in chunks of 700 (2 + 2 + 1): each slice a task on the cluster
    assert len(slice_runs) >= 9


def test_a_thread_cap_holds_for_its_own_thread_only():
    import os
    from concurrent.futures import ThreadPoolExecutor

    from poisonguard.detectors.threads import thread_cap, worker_threads

    cores = os.cpu_count() or 1
    assert worker_threads(-1, 1000) == cores and worker_threads(3, 2) == 2
    with thread_cap(1):
        assert worker_threads(-1, 1000) == 1
        with ThreadPoolExecutor(1) as other:  # another worker thread of the process keeps its cores
            assert other.submit(worker_threads, -1, 1000).result() == cores
    assert worker_threads(-1, 1000) == cores
    with pytest.raises(ValueError, match="at least 1"), thread_cap(0):
        pass


def test_a_slice_scored_for_a_parallel_runner_starts_one_thread_per_detector(monkeypatch):
    """ECOD and Isolation Forest share their work among one thread per core; a slice that a runner scores
    beside others (Dask's score-slice task) holds each to one thread, and scores the same."""
    import os

    from poisonguard.detectors import outliers
    from poisonguard.detectors.outliers import ECODDetector, IForestDetector
    from poisonguard.score.scorers import ChunkScorer

    pools, real_pool = [], outliers.ThreadPoolExecutor
    monkeypatch.setattr(outliers, "ThreadPoolExecutor", lambda max_workers: pools.append(max_workers)
                        or real_pool(max_workers))
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    X = np.random.default_rng(0).normal(size=(4000, 6))
    fitted = [ECODDetector().fit(X), IForestDetector().fit(X)]

    class Scorer(ChunkScorer):
        def _slice_scores(self, rows):
            return {type(d).__name__: d.decision_function(rows.to_numpy()) for d in fitted}

    scorer = Scorer(ScanConfig())
    free = scorer.slice_scores(pd.DataFrame(X))
    assert pools == [6, 4]  # ECOD: one thread per feature; the forest: per 1,000 rows; up to 8 cores
    pools.clear()
    capped = scorer.slice_scores(pd.DataFrame(X), threads=1)
    assert pools == []  # one thread each: no pool is started
    for name, scores in free.items():
        np.testing.assert_array_equal(capped[name], scores)


@pytest.fixture
def dask_cluster(prefect_harness, tmp_path):
    """A real multi-process cluster: ``dask scheduler`` and two ``dask worker`` processes of one thread each,
    whose tasks report to the test's Prefect server. Yields the scheduler's address."""
    import os
    import subprocess
    import sys
    import time
    from pathlib import Path

    from distributed import Client
    from prefect.settings import PREFECT_API_URL

    scheduler_file = tmp_path / "scheduler.json"
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    dask = [str(Path(sys.executable).with_name("dask"))]
    common = ["--scheduler-file", str(scheduler_file), "--no-dashboard"]
    processes = [subprocess.Popen([*dask, "scheduler", "--port", "0", *common], env=env, cwd=tmp_path,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        for _ in range(2):
            processes.append(subprocess.Popen([*dask, "worker", "--nthreads", "1", "--nworkers", "1", *common],
                                              env=env, cwd=tmp_path, stdout=subprocess.DEVNULL,
                                              stderr=subprocess.DEVNULL))
        for _ in range(600):  # the scheduler writes its file once it listens
            if scheduler_file.exists() and scheduler_file.stat().st_size:
                break
            time.sleep(0.1)
        with Client(scheduler_file=str(scheduler_file), timeout=60) as client:
            client.wait_for_workers(2, timeout=120)
            yield client
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()


def test_scan_on_a_multi_process_dask_cluster_matches_the_default_runner(dask_cluster, tmp_path, sample_batch,
                                                                         sample_reference):
    """Chunked on a scheduler with two worker processes, against the Prefect server: the same rows out as
    the default runner, and the slices scored in the worker processes."""
    import os

    from distributed import get_task_stream

    from poisonguard.flows.scan import run_scan

    settings = dict(label_col="risk_grade", dataset="loans", reference=sample_reference,
                    suite_dir=tmp_path / "no-suites", score_chunk_rows=500,
                    detectors=("ecod", "iforest", "label_model"))
    default = run_scan(sample_batch, ScanConfig(out_dir=tmp_path / "default", **settings))
    with get_task_stream(dask_cluster) as stream:
        on_cluster = run_scan(sample_batch, ScanConfig(out_dir=tmp_path / "cluster", task_runner="dask",
                                                       dask_address=dask_cluster.scheduler.address,
                                                       chunk_rows=700, **settings))
    assert (on_cluster.rows_clean, on_cluster.rows_quarantined) == (default.rows_clean, default.rows_quarantined)
    for ours, theirs in zip(_outputs(tmp_path / "cluster", on_cluster), _outputs(tmp_path / "default", default)):
        pd.testing.assert_frame_equal(ours.drop(columns=TIMESTAMPS, errors="ignore"),
                                      theirs.drop(columns=TIMESTAMPS, errors="ignore"), check_dtype=False)
    pids = dask_cluster.run(os.getpid)  # worker address -> its process
    assert len(set(pids.values())) == 2 and os.getpid() not in pids.values()
    ran_on = {task["worker"] for task in stream.data}
    assert len(stream.data) >= 5 and ran_on <= set(pids)  # 2,000 rows in chunks of 700: 2 + 2 + 1 slices
