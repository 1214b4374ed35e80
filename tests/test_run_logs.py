"""The core modules' own log records reach the Prefect run log, where a served deployment shows them."""

from __future__ import annotations

import time

from conftest import make_frame

from poisonguard.config import ScanConfig


def test_core_module_logs_reach_the_prefect_run_log(prefect_harness, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, LogFilter, LogFilterFlowRunId

    from poisonguard.flows.scan import scan_batch

    make_frame(400, seed=0).to_csv(tmp_path / "ref.csv", index=False)
    make_frame(200, seed=1).to_csv(tmp_path / "batch.csv", index=False)
    config = ScanConfig(label_col="label", reference=tmp_path / "ref.csv", out_dir=tmp_path / "out")
    state = scan_batch(tmp_path / "batch.csv", config, return_state=True)
    assert state.is_completed()
    wanted = {"poisonguard.score.scorers", "poisonguard.pipeline.chunks"}
    with get_client(sync_client=True) as client:
        (run,) = client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id])))
        for _ in range(30):  # Prefect sends log records in batches from a background worker
            logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])))
            names = {log.name for log in logs}
            if wanted <= names:
                break
            time.sleep(1)
    import logging

    states = {name: (logging.getLogger(name).disabled, logging.getLogger(name).level,
                     logging.getLogger(name).propagate, logging.getLogger(name).handlers)
              for name in ("poisonguard", "poisonguard.score.scorers", "poisonguard.pipeline.chunks")}
    assert wanted <= names, (names, states)
    assert any("fitted" in log.message for log in logs if log.name == "poisonguard.score.scorers")
