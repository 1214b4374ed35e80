"""Object storage: an inbox on S3 whose files are each taken by exactly one run, and outputs published there,
against a local S3 server (moto's, started by the tests)."""

from __future__ import annotations

import json
import os
import socket
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
from poisonguard.ingest.object_inbox import ObjectInbox

pytest.importorskip("s3fs")
pytest.importorskip("moto")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture()
def s3(monkeypatch, tmp_path):
    """A local S3 server with the bucket ``bkt``; the standard AWS variables point every client at it.
    Yields the s3fs file system."""
    import fsspec
    import s3fs

    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-p", str(port)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                            "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}.items():
            monkeypatch.setenv(name, value)
        s3fs.S3FileSystem.clear_instance_cache()  # instances of another test's server
        fs = fsspec.filesystem("s3")
        fs.mkdir("bkt")
        yield fs
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
        server.terminate()
        server.wait(timeout=30)


def _put(fs, local: Path, key: str) -> None:
    fs.put_file(str(local), key)
    manifest = local.with_name(local.name + ".manifest.json")
    if manifest.exists():
        fs.put_file(str(manifest), key + ".manifest.json")


def test_concurrent_runs_claim_each_object_exactly_once(s3, tmp_path):
    for i in range(12):
        s3.pipe_file(f"bkt/inbox/b{i:02d}.csv", b"x,label\n1,a\n")
    taken: list[list[str]] = [[] for _ in range(4)]

    def run(slot: int) -> None:
        inbox = ObjectInbox("s3://bkt/inbox", tmp_path / f"work-{slot}")
        for name in inbox.waiting(min_age=0):
            got = inbox.claim(name)
            if got is not None:
                taken[slot].append(got.name)
                assert got.path.read_bytes() == b"x,label\n1,a\n"  # the run scans its local copy

    threads = [threading.Thread(target=run, args=(slot,)) for slot in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(name for slot in taken for name in slot) == [f"b{i:02d}.csv" for i in range(12)]
    assert ObjectInbox("s3://bkt/inbox", tmp_path / "late").waiting(min_age=0) == []  # all claimed


def test_a_stale_claim_is_taken_over_once_and_the_dead_run_cannot_file_it(s3, tmp_path):
    s3.pipe_file("bkt/inbox/a.csv", b"x,label\n1,a\n")
    dead = ObjectInbox("s3://bkt/inbox", tmp_path / "dead")
    first = dead.claim("a.csv")
    assert first is not None and dead.claim("a.csv") is None
    later = ObjectInbox("s3://bkt/inbox", tmp_path / "later")
    assert later.stale(stale_after=3600) == []  # a fresh claim is not stale
    stale = later.stale(stale_after=0)
    assert stale == [("a.csv", 1)]
    taken_over = later.reclaim(stale[0])
    assert taken_over.recovered and taken_over.generation == 2
    assert ObjectInbox("s3://bkt/inbox", tmp_path / "racer").reclaim(stale[0]) is None  # one run wins
    assert dead.settle(first, "processed", "tag") is None  # the dead run's claim is no longer its own
    assert later.settle(taken_over, "processed", "tag") == "s3://bkt/inbox/processed/a.csv"
    assert s3.find("bkt/inbox/processing") == [] and not s3.exists("bkt/inbox/a.csv")


@pytest.mark.usefixtures("prefect_harness")
def test_an_inbox_on_s3_files_clean_poisoned_and_tampered_batches_and_publishes_the_outputs(s3, tmp_path):
    from poisonguard.flows.inbox import process_inbox

    def invoke(*args):
        result = CliRunner().invoke(app, [str(a) for a in args])
        assert result.exit_code == 0, result.output

    make_frame(400, seed=1).to_csv(tmp_path / "reference.csv", index=False)
    trust = tmp_path / "trust.json"
    invoke("keys", "generate", "--source", "bank-a", "--key-id", "bank-a-k1", "--key-dir", tmp_path / "keys",
           "--trust-store", trust, "--dataset", "toy")
    batches = {"clean.csv": make_frame(120, seed=2), "poisoned.csv": make_frame(120, seed=3),
               "tampered.csv": make_frame(120, seed=4)}
    batches["poisoned.csv"].loc[:5, "x2"] = 500.0  # far outside the reference: quarantined by its range rule
    for name, frame in batches.items():
        frame.to_csv(tmp_path / name, index=False)
        invoke("sign", tmp_path / name, "--source", "bank-a", "--key", tmp_path / "keys" / "bank-a-k1.pem",
               "--dataset", "toy")
    with open(tmp_path / "tampered.csv", "a") as tampered:  # one row added after signing
        tampered.write(batches["tampered.csv"].iloc[[0]].to_csv(index=False, header=False))
    for name in batches:
        _put(s3, tmp_path / name, f"bkt/inbox/{name}")

    settings = {"label_col": "label", "reference": str(tmp_path / "reference.csv"), "out_dir": str(tmp_path / "out"),
                "trust_store": str(trust), "publish_url": "s3://bkt/published"}
    results = {r.name: r for r in process_inbox("s3://bkt/inbox", settings, min_age_seconds=0)}

    assert {name: r.outcome for name, r in results.items()} == {
        "clean.csv": "processed", "poisoned.csv": "processed", "tampered.csv": "failed"}
    assert results["poisoned.csv"].status == "rows_quarantined"
    listed = {key.rsplit("/", 1)[-1] for key in s3.find("bkt/inbox")}
    assert listed == {"clean.csv", "clean.csv.manifest.json", "poisoned.csv", "poisoned.csv.manifest.json",
                      "tampered.csv", "tampered.csv.manifest.json", "tampered.csv.reason.json"}
    assert s3.find("bkt/inbox/processing") == []
    assert {key.split("/")[2] for key in s3.find("bkt/inbox")} == {"processed", "failed"}
    reason = json.loads(s3.cat_file("bkt/inbox/failed/tampered.csv.reason.json"))
    assert reason["status"] == "rejected" and any(code.startswith("provenance:") for code in reason["reasons"])
    assert reason["filed_as"] == "s3://bkt/inbox/failed/tampered.csv"

    # Outputs on S3: the listing names both delivered batches' clean files, and every batch's rows are
    # conserved there (clean + quarantined = rows in); each published report names the file's filed place.
    listing = json.loads(s3.cat_file("bkt/published/clean/toy/_committed.json"))
    assert len(listing["files"]) == 2
    for name, result in results.items():
        report = json.loads(s3.cat_file(f"bkt/published/reports/toy/{result.batch_id}.json"))
        assert report["source"]["path"] == f"s3://bkt/inbox/{result.moved_to}"
        clean = report["outputs"].get("clean")
        rows = (len(pd.read_parquet(f"s3://bkt/published/{clean}")) if clean else 0) \
            + len(pd.read_parquet(f"s3://bkt/published/{report['outputs']['quarantine']}"))
        assert rows == report["rows"]["in"] == (121 if name == "tampered.csv" else 120)
        if name == "poisoned.csv":
            assert report["reasons"].get("schema:range:x2", 0) >= 6
    assert process_inbox("s3://bkt/inbox", settings, min_age_seconds=0) == []  # nothing left for a second run
    assert os.listdir(tmp_path / "out")  # the working area stays local: ledger, reports, review

    # A reviewer's release reaches S3 at once, not at the batch's next scan: the released rows' file, and the
    # listing that names it.
    poisoned = results["poisoned.csv"].batch_id
    invoke("review", "release", poisoned, "--all", "--reason", "checked", "-o", tmp_path / "out")
    released = [name for name in json.loads(s3.cat_file("bkt/published/clean/toy/_committed.json"))["files"]
                if poisoned in name and "released" in name]
    assert len(released) == 1
    held = len(pd.read_parquet(f"s3://bkt/published/clean/toy/{released[0]}"))
    assert held == json.loads(s3.cat_file(f"bkt/published/reports/toy/{poisoned}.json"))["rows"]["quarantined"]


def test_a_scan_reads_its_batch_manifest_reference_and_trust_store_from_s3(s3, tmp_path):
    """``poisonguard scan s3://...`` with the reference and the trust store on S3 too: each is copied in, the
    signed batch passes provenance, and the report names the batch's URL."""
    from poisonguard.config_file import config_from_mapping

    def invoke(*args):
        return CliRunner().invoke(app, [str(a) for a in args])

    make_frame(400, seed=1).to_csv(tmp_path / "reference.csv", index=False)
    make_frame(120, seed=2).to_csv(tmp_path / "batch.csv", index=False)
    trust = tmp_path / "trust.json"
    assert invoke("keys", "generate", "--source", "bank-a", "--key-id", "k1", "--key-dir", tmp_path / "keys",
                  "--trust-store", trust, "--dataset", "toy").exit_code == 0
    assert invoke("sign", tmp_path / "batch.csv", "--source", "bank-a", "--key", tmp_path / "keys" / "k1.pem",
                  "--dataset", "toy").exit_code == 0
    _put(s3, tmp_path / "batch.csv", "bkt/in/batch.csv")
    s3.put_file(str(tmp_path / "reference.csv"), "bkt/trusted/reference.csv")
    s3.put_file(str(trust), "bkt/trusted/trust.json")

    out = tmp_path / "out"
    scanned = invoke("scan", "s3://bkt/in/batch.csv", "-y", "label", "-r", "s3://bkt/trusted/reference.csv",
                     "--trust-store", "s3://bkt/trusted/trust.json", "--require-provenance", "-o", out, "--json")
    assert scanned.exit_code in (0, 1), scanned.output
    summary = json.loads(scanned.output[scanned.output.index("{"):])
    report = json.loads(Path(summary["report_path"]).read_text())
    assert report["source"]["path"] == "s3://bkt/in/batch.csv" and report["dataset"] == "toy"
    assert report["provenance"]["status"] == "verified"
    assert report["rows"]["clean"] + report["rows"]["quarantined"] == report["rows"]["in"] == 120
    assert not list(out.glob(".snapshots/*"))  # the copies went with the scan's snapshot folder

    missing = invoke("scan", "s3://bkt/in/missing.csv", "-y", "label", "-o", out)
    assert missing.exit_code != 0 and "s3://bkt/in/missing.csv: batch file not found" in missing.output
    # A config file's URL is kept as it is; its relative paths are resolved against the file's folder.
    config = config_from_mapping({"reference": "s3://bkt/trusted/reference.csv", "suite_dir": "suites"},
                                 base_dir=tmp_path)
    assert config.io.reference == "s3://bkt/trusted/reference.csv"
    assert config.expectations.suite_dir == (tmp_path / "suites").resolve()
