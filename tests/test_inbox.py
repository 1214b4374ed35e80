"""The inbox: every dropped batch is scanned exactly once, even with overlapping or killed runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import make_frame
from typer.testing import CliRunner

from poisonguard.cli import app
from poisonguard.config import ScanConfig
from poisonguard.flows.scan import run_scan
from poisonguard.ingest.inbox import FAILED, PROCESSED, claim, reclaim, stale_claims, waiting_files
from poisonguard.provenance.ledger import Ledger

runner = CliRunner()
AN_HOUR_AGO = time.time() - 3600


def drop(inbox: Path, name: str, seed: int, rows: int = 80) -> Path:
    path = inbox / name
    make_frame(rows, seed=seed).to_csv(path, index=False)
    os.utime(path, (AN_HOUR_AGO, AN_HOUR_AGO))
    return path


def test_only_settled_batch_files_are_waiting(tmp_path):
    drop(tmp_path, "a.csv", 1)
    (tmp_path / "a.csv.manifest.json").write_text("{}")
    (tmp_path / ".hidden.csv").write_text("x")
    (tmp_path / "notes.txt").write_text("x")
    make_frame(10).to_csv(tmp_path / "still-copying.csv", index=False)
    assert [p.name for p in waiting_files(tmp_path, min_age=5.0)] == ["a.csv"]


def test_concurrent_claims_take_each_file_exactly_once(tmp_path):
    for i in range(40):
        drop(tmp_path, f"b{i:02d}.csv", i, rows=5)
    taken: list[list[str]] = [[], [], [], []]

    def worker(slot: int) -> None:
        for path in waiting_files(tmp_path, min_age=0):
            got = claim(path)
            if got is not None:
                taken[slot].append(got.name)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    names = [name for slot in taken for name in slot]
    assert sorted(names) == [f"b{i:02d}.csv" for i in range(40)]  # each once, none lost


def test_a_stale_claim_is_taken_over_once_and_a_fresh_one_is_not(tmp_path):
    fresh = claim(drop(tmp_path, "fresh.csv", 1))
    stale = claim(drop(tmp_path, "stale.csv", 2))
    os.utime(stale.path, (AN_HOUR_AGO, AN_HOUR_AGO))
    found = stale_claims(tmp_path, stale_after=60)
    assert found == [stale.path] and fresh.path not in found
    taken_over = reclaim(found[0])
    assert taken_over.name == "stale.csv" and taken_over.recovered
    assert reclaim(found[0]) is None  # a second run racing for it gets nothing


@pytest.fixture()
def inbox_setup(tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    make_frame(400, seed=1).to_csv(tmp_path / "reference.csv", index=False)
    settings = {"label_col": "label", "reference": str(tmp_path / "reference.csv"),
                "out_dir": str(tmp_path / "out"), "require_provenance": False}
    return inbox, settings, tmp_path / "out"


@pytest.mark.usefixtures("prefect_harness")
def test_the_inbox_flow_files_each_batch_as_processed_or_failed(inbox_setup):
    from poisonguard.flows.inbox import process_inbox

    inbox, settings, out = inbox_setup
    drop(inbox, "good.csv", 2)
    drop(inbox, "broken.csv", 3).write_text("label\n")  # header only, wrong columns: rejected whole
    os.utime(inbox / "broken.csv", (AN_HOUR_AGO, AN_HOUR_AGO))
    state = process_inbox(str(inbox), settings, return_state=True)
    results = {r.name: r for r in state.result()}
    assert results["good.csv"].outcome == PROCESSED and results["broken.csv"].outcome == FAILED
    assert (inbox / "processed" / "good.csv").exists() and (inbox / "failed" / "broken.csv").exists()
    assert not list((inbox / "processing").iterdir())
    # The run says how many files failed and which, with the reason, where the Prefect UI shows it.
    assert state.name == "Some files failed" and state.message.startswith("1 of 2 file(s) processed; failed: broken.csv")
    assert "structural:" in state.message
    # The failed file explains itself, and each report names where its file was filed, not the claim.
    reason = json.loads((inbox / "failed" / "broken.csv.reason.json").read_text())
    assert reason["status"] == "rejected" and reason["file"] == "broken.csv"
    assert reason["reasons"] and all(code.startswith("structural:") for code in reason["reasons"])
    assert reason["filed_as"] == str((inbox / "failed" / "broken.csv").resolve())
    for name, folder in (("good.csv", "processed"), ("broken.csv", "failed")):
        report = json.loads(next(out.glob(f"reports/*/{results[name].batch_id}.json")).read_text())
        assert report["source"]["path"] == str((inbox / folder / name).resolve())
        assert "processing" in report["source"]["scanned_as"]
        html = next(out.glob(f"reports/*/{results[name].batch_id}.html")).read_text()
        assert str(inbox / folder / name) in html
    assert process_inbox(str(inbox), settings) == []  # nothing left for a second run


@pytest.mark.usefixtures("prefect_harness")
def test_a_run_killed_after_scanning_is_recovered_without_duplicating_output(inbox_setup, tmp_path):
    from poisonguard.flows.inbox import process_inbox

    inbox, settings, out = inbox_setup
    key = tmp_path / "keys"
    runner.invoke(app, ["keys", "generate", "--source", "s", "--key-id", "k", "--key-dir", str(key),
                        "--trust-store", str(tmp_path / "trust.json")])
    batch = drop(inbox, "signed.csv", 4)
    runner.invoke(app, ["sign", str(batch), "--source", "s", "--key", str(key / "k.pem"), "--dataset", "signed"])
    # A run claims the batch, scans it, and dies before filing it away.
    dead = claim(batch)
    config = ScanConfig(label_col="label", reference=Path(settings["reference"]), out_dir=out, dataset="signed",
                        trust_store=tmp_path / "trust.json", require_provenance=True)
    first = run_scan(dead.path, config)
    clean = out / "clean" / "signed" / f"{first.batch_id}.parquet"
    written = clean.read_bytes()
    os.utime(dead.path, (AN_HOUR_AGO, AN_HOUR_AGO))

    signed_settings = settings | {"trust_store": str(tmp_path / "trust.json"), "require_provenance": True}
    (result,) = process_inbox(str(inbox), signed_settings, stale_after_seconds=60)
    assert result.outcome == PROCESSED and result.batch_id == first.batch_id
    assert clean.read_bytes() == written  # the dead run's outputs stand; nothing written twice
    assert [e.outcome for e in Ledger(out / "ledger.sqlite").entries()].count(first.status) == 1

    # The same bytes dropped again later are a replay, filed as failed.
    again = drop(inbox, "signed.csv", 4)
    (inbox / "processed" / "signed.csv.manifest.json").replace(inbox / "signed.csv.manifest.json")
    os.utime(again, (AN_HOUR_AGO, AN_HOUR_AGO))
    (replayed,) = process_inbox(str(inbox), signed_settings)
    assert replayed.outcome == FAILED and replayed.status == "replay"


def test_overlapping_runs_scan_every_file_exactly_once(inbox_setup, tmp_path):
    inbox, settings, out = inbox_setup
    for i in range(4):
        drop(inbox, f"part{i}.csv", 10 + i)
    command = [sys.executable, "-c", "from poisonguard.cli import main; main()", "inbox", "--inbox", str(inbox),
               "-y", "label", "-r", settings["reference"], "--out", str(out), "--no-require-provenance",
               "--min-age", "0"]
    processes = []
    for i in range(2):
        env = os.environ | {"PREFECT_HOME": str(tmp_path / f"prefect-{i}")}
        env.pop("PREFECT_API_URL", None)
        processes.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                          text=True))
    outputs = [p.communicate(timeout=300)[0] for p in processes]
    assert all(p.returncode == 0 for p in processes), outputs
    filed = sorted(p.name for p in (inbox / "processed").iterdir())
    assert filed == [f"part{i}.csv" for i in range(4)]
    entries = Ledger(out / "ledger.sqlite").entries()
    assert sorted(Path(e.source_path).name.split("--")[1] for e in entries) == filed  # each scanned once
    for entry in entries:
        rows = len(pd.read_parquet(out / "clean" / entry.dataset / f"{entry.batch_id}.parquet"))
        held = out / "quarantine" / entry.dataset / f"{entry.batch_id}.parquet"
        assert rows + (len(pd.read_parquet(held)) if held.exists() else 0) == 80


def test_serve_says_how_to_start_a_server_when_none_is_configured(tmp_path):
    (tmp_path / "inbox").mkdir()
    env = os.environ | {"PREFECT_HOME": str(tmp_path / "prefect")}
    env.pop("PREFECT_API_URL", None)
    command = [sys.executable, "-c", "from poisonguard.cli import main; main()", "serve", "--inbox",
               str(tmp_path / "inbox"), "--no-require-provenance"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "prefect server start" in result.stderr


def test_the_deployment_in_prefect_yaml_runs_the_inbox_flow_with_valid_parameters():
    import inspect

    import yaml
    from prefect.client.schemas.schedules import CronSchedule

    from poisonguard.config_file import config_from_mapping
    from poisonguard.flows.inbox import process_inbox

    project = Path(__file__).resolve().parent.parent
    (deployment,) = yaml.safe_load((project / "prefect.yaml").read_text())["deployments"]
    path, function = deployment["entrypoint"].split(":")
    assert (project / path).resolve() == Path(inspect.getsourcefile(process_inbox.fn)).resolve()
    assert function == process_inbox.fn.__name__
    assert set(deployment["parameters"]) <= set(inspect.signature(process_inbox.fn).parameters)
    config_from_mapping(deployment["parameters"]["settings"])  # every setting is a known one
    (schedule,) = deployment["schedules"]
    CronSchedule(cron=schedule["cron"], timezone=schedule["timezone"])


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def test_a_served_deployment_on_a_real_server_processes_a_dropped_file(inbox_setup, tmp_path):
    import signal
    import urllib.request

    inbox, settings, out = inbox_setup
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = os.environ | {"PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_API_URL": api,
                        "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}
    prefect = [sys.executable, "-m", "prefect"]
    poisonguard = [sys.executable, "-c", "from poisonguard.cli import main; main()"]
    started = []

    def start(command, log):
        started.append(subprocess.Popen(command, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                                        start_new_session=True, cwd=tmp_path))

    def healthy() -> bool:
        try:
            return urllib.request.urlopen(f"{api}/health", timeout=2).status == 200
        except OSError:
            return False

    try:
        start([*prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)], tmp_path / "server.log")
        _wait_for(healthy, 90, "the Prefect server")
        # Paths given relative to where serve runs: the deployment's parameters hold them absolute.
        start([*poisonguard, "serve", "--inbox", os.path.relpath(inbox, tmp_path), "-y", "label",
               "-r", settings["reference"], "--out", os.path.relpath(out, tmp_path), "--no-require-provenance",
               "--min-age", "0", "--cron", "0 0 1 1 *"], tmp_path / "serve.log")
        inspect = [*prefect, "deployment", "inspect", "process-inbox/poisonguard-inbox"]
        _wait_for(lambda: subprocess.run(inspect, env=env, capture_output=True).returncode == 0, 90,
                  "the served deployment")
        with urllib.request.urlopen(f"{api}/deployments/name/process-inbox/poisonguard-inbox", timeout=10) as got:
            parameters = json.load(got)["parameters"]
        assert parameters["inbox"] == str(inbox.resolve()) and parameters["settings"]["out_dir"] == str(out.resolve())
        drop(inbox, "dropped.csv", 21)
        triggered = subprocess.run([*prefect, "deployment", "run", "process-inbox/poisonguard-inbox"], env=env,
                                   capture_output=True, text=True, timeout=60)
        assert triggered.returncode == 0, triggered.stdout + triggered.stderr
        _wait_for(lambda: (inbox / "processed" / "dropped.csv").exists(), 120, "the triggered run")
        assert len(list((out / "clean").glob("*/*.parquet"))) == 1
    finally:
        for process in reversed(started):
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)


@pytest.mark.usefixtures("prefect_harness")
def test_a_signed_batch_is_scanned_as_the_dataset_its_manifest_names(tmp_path, signed):
    from poisonguard.flows.inbox import process_inbox

    batch, trust = signed  # signed for dataset "toy"; the file is called batch.csv
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for path in (batch, batch.with_name(batch.name + ".manifest.json")):
        os.replace(path, inbox / path.name)
        os.utime(inbox / path.name, (AN_HOUR_AGO, AN_HOUR_AGO))
    settings = {"label_col": "label", "reference": str(tmp_path / "reference.csv"),
                "out_dir": str(tmp_path / "out"), "trust_store": str(trust)}
    [result] = process_inbox(str(inbox), settings)
    assert result.outcome == PROCESSED, result.detail
    assert (tmp_path / "out" / "reports" / "toy" / f"{result.batch_id}.json").exists()
    assert (inbox / "processed" / "batch.csv.manifest.json").exists()


@pytest.mark.usefixtures("prefect_harness")
def test_a_manifest_naming_a_path_as_its_dataset_never_becomes_a_folder(tmp_path, signed):
    import json

    from poisonguard.flows.scan import run_scan

    batch, trust = signed
    manifest = batch.with_name(batch.name + ".manifest.json")
    manifest.write_text(json.dumps(json.loads(manifest.read_text()) | {"dataset": "../../escaped"}))
    config = ScanConfig(label_col="label", reference=tmp_path / "reference.csv", out_dir=tmp_path / "out",
                        trust_store=trust, require_provenance=True)
    summary = run_scan(batch, config)
    assert summary.status == "rejected" and summary.dataset == "batch"  # the file's name, not the manifest's
    assert "provenance:signature_invalid" in summary.reasons
    assert not (tmp_path / "escaped").exists() and not (tmp_path.parent / "escaped").exists()


def test_a_dataset_name_that_is_a_path_is_refused(tmp_path):
    make_frame(20).to_csv(tmp_path / "batch.csv", index=False)
    result = runner.invoke(app, ["scan", str(tmp_path / "batch.csv"), "--dataset", "../elsewhere"])
    assert result.exit_code == 2, result.output
    assert "dataset '../elsewhere' cannot be used" in result.output


@pytest.mark.usefixtures("prefect_harness")
def test_a_file_whose_name_cannot_name_a_dataset_fails_alone(inbox_setup):
    from poisonguard.flows.inbox import process_inbox

    inbox, settings, _ = inbox_setup
    long_name = "x" * 140 + ".csv"  # a valid file name, but too long for a dataset folder
    drop(inbox, long_name, 4)
    drop(inbox, "good.csv", 5)
    results = {r.name: r for r in process_inbox(str(inbox), settings)}
    assert results["good.csv"].outcome == PROCESSED
    assert results[long_name].outcome == FAILED and "cannot be used" in results[long_name].detail
    assert (inbox / "failed" / long_name).exists() and not list((inbox / "processing").iterdir())
