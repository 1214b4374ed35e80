"""What a platform team sees in Prefect: each outcome as a state of its own, an event per batch, the outcome
line in the run log, runs named and tagged after their batch. Against the test harness's Prefect server."""

from __future__ import annotations

import json
import time

import pytest
from conftest import make_frame

from poisonguard.config import ScanConfig

pytestmark = pytest.mark.usefixtures("prefect_harness")


def scanned(tmp_path, name: str, frame, **settings):
    """Scan ``frame`` as ``<name>.csv`` in a flow run; (its final state, the flow run as the server has it)."""
    from prefect.client.orchestration import get_client

    from poisonguard.flows.scan import scan_batch

    make_frame(400, seed=0).to_csv(tmp_path / "ref.csv", index=False)
    frame.to_csv(tmp_path / f"{name}.csv", index=False)
    config = ScanConfig(label_col="label", reference=tmp_path / "ref.csv", out_dir=tmp_path / "out",
                        suite_dir=tmp_path / "suites", **settings)
    state = scan_batch(tmp_path / f"{name}.csv", config, return_state=True)
    with get_client(sync_client=True) as client:
        return state, client.read_flow_run(state.state_details.flow_run_id)


def run_logs(run_id) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    with get_client(sync_client=True) as client:
        for _ in range(30):  # Prefect sends log records in batches from a background worker
            messages = [log.message for log in client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))]
            if any("rows in" in message for message in messages):
                return messages
            time.sleep(1)
    return messages


def batch_events(batch_id: str) -> list[dict]:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        for _ in range(30):  # events reach the server's store from a background worker
            page = client.request("POST", "/events/filter", json={
                "filter": {"event": {"prefix": ["poisonguard.batch."]}}, "limit": 50}).json()
            found = [e for e in page["events"] if e["payload"].get("batch_id") == batch_id]
            if found:
                return found
            time.sleep(1)
    return []


def test_a_batch_rejected_whole_fails_its_run_with_the_reason_and_says_so_everywhere(tmp_path):
    from poisonguard.flows.scan import BatchRefused

    state, run = scanned(tmp_path, "broken", make_frame(200, seed=1).drop(columns="x2"))
    assert state.is_failed() and state.name == "Rejected"
    assert "structural:missing_column:x2" in state.message
    refused = state.result(raise_on_failure=False)
    assert isinstance(refused, BatchRefused) and refused.summary.status == "rejected"
    assert run.name == f"{refused.summary.dataset}/{refused.summary.batch_id}"
    assert {"dataset:broken", "outcome:rejected"} <= set(run.tags)
    assert any("broken batch" in m and "rejected" in m and "structural:missing_column:x2" in m
               for m in run_logs(run.id))
    (event,) = batch_events(refused.summary.batch_id)
    assert event["event"] == "poisonguard.batch.rejected"
    assert event["payload"]["reasons"] == {"structural:missing_column:x2": 200}
    assert event["resource"]["poisonguard.dataset"] == "broken"


def test_a_batch_with_quarantined_rows_completes_as_quarantined_and_its_event_holds_the_counts(tmp_path):
    frame = make_frame(300, seed=2)
    frame.loc[:9, "x1"] = 60.0  # ten rows far outside the reference's range
    state, run = scanned(tmp_path, "mixed", frame)
    summary = state.result()
    assert state.is_completed() and state.name == "Quarantined" and summary.rows_quarantined >= 10
    assert f"{summary.rows_quarantined:,} quarantined" in state.message and "schema:range:x1" in state.message
    assert {"dataset:mixed", "outcome:rows_quarantined"} <= set(run.tags)
    (event,) = batch_events(summary.batch_id)
    assert event["event"] == "poisonguard.batch.quarantined"
    payload = event["payload"]
    assert (payload["rows_in"], payload["rows_quarantined"]) == (300, summary.rows_quarantined)
    assert payload["quarantined_share"] == pytest.approx(summary.rows_quarantined / 300)


def test_run_scan_returns_what_was_decided_whatever_the_outcome(tmp_path):
    from poisonguard.flows.scan import run_scan

    make_frame(400, seed=0).to_csv(tmp_path / "ref.csv", index=False)
    make_frame(200, seed=1).drop(columns="x2").to_csv(tmp_path / "broken.csv", index=False)
    summary = run_scan(tmp_path / "broken.csv", ScanConfig(label_col="label", reference=tmp_path / "ref.csv",
                                                           out_dir=tmp_path / "out", suite_dir=tmp_path / "s"))
    assert summary.status == "rejected" and int(summary.exit_code) == 3


def test_the_readme_automation_on_rejected_batches_is_accepted_by_the_server():
    """The README's automation, its action swapped for one that needs no notification block."""
    from prefect.automations import Automation
    from prefect.events.actions import DoNothing
    from prefect.events.schemas.automations import EventTrigger

    automation = Automation(
        name="poisonguard: a batch was rejected",
        trigger=EventTrigger(expect={"poisonguard.batch.rejected", "poisonguard.batch.replay"},
                             match={"prefect.resource.id": "poisonguard.batch.*"}, posture="Reactive", threshold=1),
        actions=[DoNothing()],
    ).create()
    stored = Automation.read(id=automation.id)
    assert stored.trigger.expect == {"poisonguard.batch.rejected", "poisonguard.batch.replay"}
    stored.delete()


def test_each_batch_keeps_its_artifact_and_the_dataset_lists_every_batch_awaiting_review(tmp_path):
    from prefect.artifacts import Artifact

    from poisonguard.flows.scan import artifact_key

    held = make_frame(300, seed=3)
    held.loc[:9, "x1"] = 60.0
    first, _ = scanned(tmp_path, "pending-ds", held)
    clean, _ = scanned(tmp_path, "pending-ds", make_frame(300, seed=4))  # the same dataset's next batch
    key = artifact_key("pending-ds")
    for state in (first, clean):
        summary = state.result()
        assert Artifact.get(f"{key}-batch-{summary.batch_id}") is not None
    pending = Artifact.get(f"{key}-pending").data
    listed = {row["batch_id"]: row for row in (json.loads(pending) if isinstance(pending, str) else pending)}
    # The later scan of the dataset still lists the first batch, whose quarantined rows nobody has decided.
    assert listed[first.result().batch_id]["pending"] == first.result().rows_quarantined > 0
