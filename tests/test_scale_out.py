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
