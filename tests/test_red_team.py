"""Regressions from the red-team run: hostile names, exact values, concurrent replays, environment errors.

Each test failed on the code the red team probed; each protects a promise a user relies on: no row lost,
no value changed, no batch delivered twice, an error that names the path and the cause.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import make_frame
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from poisonguard import ROW_ID
from poisonguard.cli import app
from poisonguard.config import ScanConfig
from poisonguard.errors import ConfigError
from poisonguard.ingest.read import read_batch
from poisonguard.provenance.ledger import content_sha256
from poisonguard.write.outputs import OutputPaths

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


# --- names that become paths ---------------------------------------------------------------------------

@pytest.mark.parametrize("file_name", ["...csv", "..csv", ".hidden.csv", " .csv", "tab\t.csv"])
def test_a_file_name_that_cannot_name_a_dataset_is_refused_before_anything_is_written(tmp_path, file_name):
    batch = tmp_path / "in" / file_name
    batch.parent.mkdir()
    make_frame(40).to_csv(batch, index=False)
    result = invoke("scan", batch, "--out", tmp_path / "out", "-y", "label")
    assert result.exit_code == 2, result.output
    assert "cannot be used" in result.output and "--dataset" in result.output
    assert files_under(tmp_path / "out") == []


@pytest.mark.parametrize("dataset", ["..", ".", ".hidden", " loans", "a/b", "bell\x07", ""])
def test_output_paths_refuse_a_dataset_that_could_overlay_or_hide_outputs(tmp_path, dataset):
    with pytest.raises(ConfigError):
        OutputPaths.for_batch(tmp_path, dataset, "0123456789abcdef")


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.parametrize("file_name", ["loans..v2.csv", "=HYPERLINK(x) ünï.csv"])
def test_every_row_lands_in_exactly_one_output_whatever_the_file_name(tmp_path, file_name):
    from poisonguard.flows.scan import run_scan

    make_frame(400, seed=1).to_csv(tmp_path / "reference.csv", index=False)
    batch = tmp_path / file_name
    make_frame(120, seed=2).assign(x1=lambda f: f.x1.where(f.index % 10 != 0, 40.0)).to_csv(batch, index=False)
    config = ScanConfig(label_col="label", reference=tmp_path / "reference.csv", out_dir=tmp_path / "out")
    summary = run_scan(batch, config)
    assert summary.rows_quarantined > 0 and summary.rows_clean > 0
    outputs = [p for p in files_under(tmp_path / "out") if p.suffix == ".parquet"]
    ids = np.concatenate([pq.read_table(p, columns=[ROW_ID]).column(ROW_ID).to_numpy() for p in outputs])
    assert sorted(ids.tolist()) == list(range(120))
    assert len({p.parent for p in outputs}) == 2  # clean/<dataset>/ and quarantine/<dataset>/


# --- values as written -----------------------------------------------------------------------------------

def as_written(value: float) -> str:
    return repr(float(value))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(allow_nan=False, allow_infinity=False, width=64), min_size=1, max_size=30),
       st.lists(st.sampled_from(["12", "007", "2024-01-01", "x"]), min_size=1, max_size=30))
def test_every_format_reads_numbers_and_strings_exactly_as_written(tmp_path_factory, numbers, words):
    folder = tmp_path_factory.mktemp("formats")
    n_rows = min(len(numbers), len(words))
    numbers, words = numbers[:n_rows], words[:n_rows]
    (folder / "b.csv").write_text(
        "amount,created_at\n" + "".join(f"{as_written(x)},{json.dumps(w)}\n" for x, w in zip(numbers, words))
    )
    (folder / "b.jsonl").write_text(
        "".join(f'{{"amount": {as_written(x)}, "created_at": {json.dumps(w)}}}\n' for x, w in zip(numbers, words))
    )
    pq.write_table(pa.table({"amount": numbers, "created_at": words}), folder / "b.parquet")
    assert read_batch(folder / "b.csv").frame["amount"].tolist() == numbers
    digests = set()
    for name in ("b.jsonl", "b.parquet"):
        frame = read_batch(folder / name).frame
        assert frame["amount"].tolist() == numbers, name
        assert frame["created_at"].astype(str).tolist() == words, name
        digests.add(content_sha256(frame))
    # CSV reads "007" as the number 7, as a CSV reader must; the JSON and Parquet twins agree value for value.
    assert len(digests) == 1


def test_the_sample_as_json_lines_keeps_every_cell_of_the_file(tmp_path, sample_batch):
    import csv

    with sample_batch.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    frame = read_batch(sample_batch).frame
    kinds = {c: frame[c].dtype.kind for c in frame.columns}

    def cell(column: str, text: str):
        if text == "":
            return None
        return {"i": int, "f": float}.get(kinds[column], str)(text)

    # Numbers go into the JSON exactly as the CSV spells them ("0.413"), as a source exporting JSON would.
    lines = [json.dumps({k: cell(k, v) for k, v in row.items()}) for row in rows]
    (tmp_path / "b.jsonl").write_text("\n".join(lines) + "\n")
    from_json = read_batch(tmp_path / "b.jsonl").frame
    for column in (c for c, kind in kinds.items() if kind == "f"):
        expected = [float(row[column]) if row[column] else np.nan for row in rows]
        np.testing.assert_array_equal(from_json[column].to_numpy(dtype=float), np.array(expected), err_msg=column)
    assert content_sha256(from_json) == content_sha256(frame)


# --- replays under concurrency ---------------------------------------------------------------------------

def test_the_replay_lock_makes_a_second_scan_of_the_same_rows_wait(tmp_path):
    import threading

    from poisonguard.provenance.ledger import ReplayLock

    order: list[str] = []
    first = ReplayLock(tmp_path / "ledger.sqlite")
    first.hold("ab" * 32)
    second_started = threading.Event()

    def second_scan():
        with ReplayLock(tmp_path / "ledger.sqlite") as second:
            second_started.set()
            second.hold("ab" * 32)
            order.append("second checks")

    thread = threading.Thread(target=second_scan)
    thread.start()
    second_started.wait(5)
    thread.join(0.5)
    order.append("first records")
    first.release()
    thread.join(5)
    assert order == ["first records", "second checks"]


@pytest.mark.usefixtures("prefect_harness")
def test_two_signed_copies_of_the_same_rows_scanned_at_once_are_delivered_once(tmp_path, signed):
    import shutil
    from concurrent.futures import ThreadPoolExecutor

    from conftest import signed_config

    from poisonguard.flows.scan import run_scan

    batch, trust = signed
    twin = tmp_path / "twin.csv"
    shutil.copy(batch, twin)
    shutil.copy(f"{batch}.manifest.json", f"{twin}.manifest.json")
    config = signed_config(tmp_path, trust)
    with ThreadPoolExecutor(2) as pool:
        summaries = list(pool.map(lambda path: run_scan(path, config), [batch, twin]))
    statuses = [s.status for s in summaries]
    delivered = [s for s in statuses if s in ("clean", "rows_quarantined")]
    assert len(delivered) == 1 and statuses.count("replay") == 1, statuses


# --- no orphaned servers ---------------------------------------------------------------------------------

def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from /proc")
@pytest.mark.parametrize("signal_name", ["SIGKILL", "SIGTERM"])
def test_a_killed_scan_leaves_no_prefect_server_running(tmp_path, sample_batch, sample_reference, signal_name):
    import os
    import signal
    import subprocess
    import sys
    import time

    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env["PREFECT_HOME"] = str(tmp_path / "prefect")
    command = [str(Path(sys.executable).parent / "poisonguard"), "scan", str(sample_batch), "--dataset", "loans",
               "-y", "risk_grade", "-r", str(sample_reference), "--out", str(tmp_path / "out"), "--prefect"]
    scan = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, servers = time.monotonic() + 120, []
    while not servers and time.monotonic() < deadline and scan.poll() is None:
        servers = [pid for pid in _children(scan.pid)
                   if b"prefect.server.api.server" in Path(f"/proc/{pid}/cmdline").read_bytes()]
        time.sleep(0.2)
    assert servers, "the scan never started its temporary server"
    scan.send_signal(getattr(signal, signal_name))
    scan.wait(60)
    deadline = time.monotonic() + 20
    while any(_alive(pid) for pid in servers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_alive(pid) for pid in servers), f"server {servers} outlived a scan ended by {signal_name}"


# --- environment errors: one line naming the path and the cause ------------------------------------------

def test_an_output_directory_that_is_a_file_is_a_usage_error(tmp_path):
    make_frame(40).to_csv(tmp_path / "batch.csv", index=False)
    (tmp_path / "out").write_text("not a folder")
    result = invoke("scan", tmp_path / "batch.csv", "--out", tmp_path / "out")
    assert result.exit_code == 2, result.output
    assert "is a file" in result.output and str(tmp_path / "out") in result.output
    assert "bug" not in result.output


@pytest.fixture()
def small_batch(tmp_path) -> tuple[Path, list[str]]:
    make_frame(400, seed=1).to_csv(tmp_path / "reference.csv", index=False)
    make_frame(60, seed=2).to_csv(tmp_path / "batch.csv", index=False)
    args = ["scan", tmp_path / "batch.csv", "-y", "label", "-r", tmp_path / "reference.csv", "--out", tmp_path / "out"]
    return tmp_path / "out", args


@pytest.mark.usefixtures("prefect_harness")
def test_a_file_in_the_way_of_the_reports_ends_the_scan_with_exit_74_and_lists_nothing_for_training(small_batch):
    from poisonguard.write.committed import committed_files

    out_dir, args = small_batch
    out_dir.mkdir()
    (out_dir / "reports").write_text("a file where the reports folder goes")
    result = invoke(*args)
    assert result.exit_code == 74, result.output
    assert "reports" in result.output and "bug" not in result.output
    assert list((out_dir / "clean" / "batch").glob("*.parquet"))  # written, but not complete
    assert committed_files(out_dir, "batch") == []


@pytest.mark.usefixtures("prefect_harness")
def test_a_full_disk_during_a_scan_ends_it_with_exit_74_and_the_cause(small_batch, monkeypatch):
    import errno

    import poisonguard.write.atomic as store

    def disk_full(path):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(store, "sync_file", disk_full)
    out_dir, args = small_batch
    result = invoke(*args)
    assert result.exit_code == 74, result.output
    assert "No space left on device" in result.output and "bug" not in result.output
    assert [p for p in files_under(out_dir) if p.suffix == ".parquet"] == []


def test_a_storage_error_is_recognised_through_the_errors_it_caused():
    import errno
    import sqlite3

    from poisonguard.errors import storage_error

    try:
        try:
            raise PermissionError(errno.EACCES, "Permission denied", "/data/out/clean")
        except PermissionError as cause:
            raise RuntimeError("writing failed") from cause
    except RuntimeError as error:
        found = storage_error(error)
    assert found is not None and "/data/out/clean: Permission denied" in str(found)
    assert storage_error(sqlite3.OperationalError("attempt to write a readonly database")) is not None
    assert storage_error(ValueError("a bug")) is None


@pytest.mark.usefixtures("prefect_harness")
def test_outputs_honour_the_umask(tmp_path):
    import os
    import stat

    from poisonguard.flows.scan import run_scan

    make_frame(400, seed=1).to_csv(tmp_path / "reference.csv", index=False)
    make_frame(60, seed=2).to_csv(tmp_path / "batch.csv", index=False)
    previous = os.umask(0o022)
    try:
        summary = run_scan(tmp_path / "batch.csv", ScanConfig(label_col="label", reference=tmp_path / "reference.csv",
                                                                out_dir=tmp_path / "out"))
    finally:
        os.umask(previous)
    paths = OutputPaths.for_batch(tmp_path / "out", summary.dataset, summary.batch_id)
    for written in (paths.clean, paths.report, paths.report.with_suffix(".html")):
        assert stat.S_IMODE(written.stat().st_mode) == 0o644, written


@pytest.mark.usefixtures("prefect_harness")
def test_a_parquet_column_of_structs_is_scanned_without_a_reference(tmp_path):
    from poisonguard.flows.scan import run_scan

    rng = np.random.default_rng(0)
    table = pa.table({"x": rng.normal(size=200), "meta": [{"a": i % 3, "b": "s"} for i in range(200)],
                      "y": ["a", "b"] * 100})
    pq.write_table(table, tmp_path / "structs.parquet")
    summary = run_scan(tmp_path / "structs.parquet", ScanConfig(label_col="y", out_dir=tmp_path / "out"))
    paths = OutputPaths.for_batch(tmp_path / "out", summary.dataset, summary.batch_id)
    clean = pq.read_table(paths.clean)
    assert pa.types.is_struct(clean.schema.field("meta").type)
    held = pq.read_table(paths.quarantine).num_rows if paths.quarantine.exists() else 0
    assert clean.num_rows + held == 200


def test_auditing_a_mistyped_output_directory_is_an_error_and_creates_nothing(tmp_path):
    result = invoke("review", "audit", "--verify", "-o", tmp_path / "typo")
    assert result.exit_code == 2 and "no poisonguard outputs" in result.output
    assert not (tmp_path / "typo").exists()


# --- text from data reaches people neutralised -----------------------------------------------------------

HOSTILE_COLUMN = '=HYPERLINK("http://evil")'
HOSTILE_CELL = "\x1b]0;pwned\x07\x1b[2J\x1b[31mred"


@pytest.fixture(scope="module")
def hostile_scan(tmp_path_factory, prefect_harness):
    from poisonguard.flows.scan import run_scan

    folder = tmp_path_factory.mktemp("hostile")
    make_frame(400, seed=1).assign(**{HOSTILE_COLUMN: "ok"}).to_csv(folder / "reference.csv", index=False)
    batch = make_frame(60, seed=2).assign(**{HOSTILE_COLUMN: HOSTILE_CELL})
    batch.loc[:4, "x1"] = 500.0
    batch.to_csv(folder / "batch.csv", index=False)
    summary = run_scan(folder / "batch.csv", ScanConfig(label_col="label", reference=folder / "reference.csv",
                                                          out_dir=folder / "out"))
    assert summary.rows_quarantined
    return summary, folder / "out"


def test_a_csv_export_escapes_formulas_in_the_header(hostile_scan, tmp_path):
    summary, out_dir = hostile_scan
    result = invoke("review", "show", summary.batch_id, "-o", out_dir, "--csv", tmp_path / "rows.csv")
    assert result.exit_code == 0, result.output
    header = (tmp_path / "rows.csv").read_text().splitlines()[0]
    assert not any(cell.startswith(("=", '"=')) for cell in header.split(","))
    assert "'=HYPERLINK" in header


def test_showing_a_row_never_sends_its_escape_sequences_to_the_terminal(hostile_scan):
    summary, out_dir = hostile_scan
    held = pq.read_table(OutputPaths.for_batch(out_dir, summary.dataset, summary.batch_id).quarantine)
    row = held.column(ROW_ID)[0].as_py()
    result = invoke("review", "show", summary.batch_id, "-o", out_dir, "--row", row)
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.output and "\x07" not in result.output
    assert "\\x1b]0;pwned" in result.output


def test_a_decision_that_was_committed_is_reported_as_committed_when_the_report_cannot_be_refreshed(
    hostile_scan, tmp_path, monkeypatch
):
    import errno
    import shutil

    import poisonguard.report.html as html_report

    summary, scanned = hostile_scan
    out_dir = tmp_path / "out"
    shutil.copytree(scanned, out_dir)

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(out_dir / "reports"))

    monkeypatch.setattr(html_report, "render_index", disk_full)
    result = invoke("review", "release", summary.batch_id, "--all", "--reason", "checked", "-o", out_dir)
    assert result.exit_code == 0, result.output
    assert "released" in result.output and "not refreshed" in result.output
    assert list((out_dir / "clean").glob("*/*.released-*.parquet"))
    assert invoke("review", "audit", "--verify", "-o", out_dir).exit_code == 0


def test_markdown_for_prefect_shows_names_literally():
    from poisonguard.report.scan_report import ScanSummary, summary_markdown
    from poisonguard.safe_text import markdown_text, printable

    assert markdown_text("[x](javascript:alert(1))") == "\\[x\\]\\(javascript:alert\\(1\\)\\)"
    assert printable("a\x1b[2Jb\u202e") == "a\\x1b[2Jb\\u202e"
    assert printable("ünï 漢字") == "ünï 漢字"
    summary = ScanSummary(dataset="x![img](http://e)", batch_id="0123456789abcdef", status="clean", rows_in=1,
                          rows_clean=1, rows_quarantined=0, reasons={}, report_path="r.json")
    assert "![img](" not in summary_markdown(summary, None)


# --- what training may read ------------------------------------------------------------------------------

@pytest.mark.usefixtures("prefect_harness")
def test_the_committed_listing_follows_scans_releases_and_rejections(tmp_path):
    from poisonguard.flows.scan import run_scan
    from poisonguard.write.committed import committed_files

    make_frame(400, seed=1).to_csv(tmp_path / "reference.csv", index=False)
    batch = make_frame(60, seed=2)
    batch.loc[:2, "x1"] = 500.0
    batch.to_csv(tmp_path / "batch.csv", index=False)
    config = ScanConfig(label_col="label", reference=tmp_path / "reference.csv", out_dir=tmp_path / "out")
    summary = run_scan(tmp_path / "batch.csv", config)
    paths = OutputPaths.for_batch(config.io.out_dir, "batch", summary.batch_id)
    assert committed_files(config.io.out_dir, "batch") == [paths.clean]

    released = invoke("review", "release", summary.batch_id, "--all", "--reason", "fine", "-o", config.io.out_dir)
    assert released.exit_code == 0, released.output
    listed = committed_files(config.io.out_dir, "batch")
    assert listed[0] == paths.clean and len(listed) == 2 and ".released-" in listed[1].name
    rows = sum(pq.read_metadata(p).num_rows for p in listed)
    assert rows == 60  # every row of the batch, once

    make_frame(60, seed=3).drop(columns="x2").to_csv(tmp_path / "broken.csv", index=False)
    broken = run_scan(tmp_path / "broken.csv", config.with_overrides(dataset="batch"))
    assert broken.status == "rejected"
    assert len(committed_files(config.io.out_dir, "batch")) == 2  # the rejected batch adds nothing


@pytest.mark.usefixtures("prefect_harness")
def test_the_same_rows_resent_as_signed_json_lines_are_a_replay(tmp_path, signed):
    import csv

    from conftest import signed_config

    from poisonguard.flows.scan import run_scan

    batch, trust = signed
    first = run_scan(batch, signed_config(tmp_path, trust))
    assert first.status in ("clean", "rows_quarantined")
    with batch.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    numeric = {"x1", "x2", "count"}
    resent = tmp_path / "resent.jsonl"  # numbers exactly as the CSV spells them, as an exporter would write
    resent.write_text("".join(
        "{" + ", ".join(f'"{k}": {v}' if k in numeric else f'"{k}": {json.dumps(v)}' for k, v in row.items()) + "}\n"
        for row in rows
    ))
    signing = invoke("sign", resent, "--source", "bank-a", "--key", tmp_path / "keys" / "bank-a-k1.pem",
                     "--dataset", "toy")
    assert signing.exit_code == 0, signing.output
    again = run_scan(resent, signed_config(tmp_path, trust))
    assert again.status == "rejected" and again.reasons == {"provenance:replay": 80}, again
    assert not OutputPaths.for_batch(tmp_path / "out", "toy", again.batch_id).clean.exists()


# --- the bytes checked are the bytes scanned -------------------------------------------------------------

@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.parametrize("chunk_rows", [None, 25])
def test_a_file_rewritten_after_its_digest_was_taken_is_scanned_as_the_signed_content(
    tmp_path, signed, monkeypatch, chunk_rows
):
    from conftest import signed_config

    import poisonguard.ingest.read as ingest
    from poisonguard.flows.scan import run_scan

    batch, trust = signed
    signed_rows = pd.read_csv(batch)
    tampered = signed_rows.assign(x1=999.0)

    def rewritten_after(hashing):
        def hash_then_let_the_writer_in(path, *args):
            result = hashing(path, *args)
            tampered.to_csv(path, index=False)  # the file's writer, between the digest and the parse
            return result
        return hash_then_let_the_writer_in

    for name in ("file_sha256", "snapshot_file"):  # whichever the scan hashes with
        if hasattr(ingest, name):
            monkeypatch.setattr(ingest, name, rewritten_after(getattr(ingest, name)))
    summary = run_scan(batch, signed_config(tmp_path, trust, chunk_rows=chunk_rows, max_false_quarantine=0.001))
    assert summary.provenance["status"] == "verified"
    paths = OutputPaths.for_batch(tmp_path / "out", "toy", summary.batch_id)
    outputs = [pd.read_parquet(p) for p in (paths.clean, paths.quarantine) if p.exists()]
    scanned = pd.concat(outputs).sort_values(ROW_ID)
    np.testing.assert_array_equal(scanned["x1"].to_numpy(), signed_rows["x1"].to_numpy())
    assert not list((tmp_path / "out" / ".snapshots").glob("*/*"))  # the private copy is gone


@pytest.mark.usefixtures("prefect_harness")
def test_prefect_artifacts_show_a_dataset_name_as_literal_text(tmp_path):
    from prefect.artifacts import Artifact

    from poisonguard.flows.scan import artifact_key, run_scan

    dataset = "loans_[click](javascript:alert(1))"
    make_frame(400, seed=1).to_csv(tmp_path / "reference.csv", index=False)
    make_frame(40, seed=2).to_csv(tmp_path / "batch.csv", index=False)
    run_scan(tmp_path / "batch.csv", ScanConfig(label_col="label", reference=tmp_path / "reference.csv",
                                                  out_dir=tmp_path / "out", dataset=dataset))
    for suffix in ("summary", "reasons"):
        artifact = Artifact.get(f"{artifact_key(dataset)}-{suffix}")
        assert "[click](" not in artifact.description and "\\[click\\]" in artifact.description
    assert "[click](" not in Artifact.get(f"{artifact_key(dataset)}-summary").data
