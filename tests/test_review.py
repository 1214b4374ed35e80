"""The quarantine report (HTML + JSON + Prefect artifacts) and the review command with its audit log."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import make_frame
from typer.testing import CliRunner

from poisonguard import EXPLANATION, REASONS, ROW_ID
from poisonguard.cli import app
from poisonguard.config import ScanConfig
from poisonguard.errors import ConfigError
from poisonguard.flows.scan import run_scan
from poisonguard.report.figures import class_balance, class_counts
from poisonguard.review.audit import AuditLog, ReviewError
from poisonguard.review.batches import released_row_ids
from poisonguard.review.decisions import decide
from poisonguard.review.export import export_csv
from poisonguard.safe_text import spreadsheet_text
from poisonguard.write.outputs import OutputPaths

runner = CliRunner()


def invoke(*args, env=None):
    return runner.invoke(app, [str(a) for a in args], env=env)


def html_of(out_dir: Path, summary) -> str:
    return (out_dir / "reports" / summary.dataset / f"{summary.batch_id}.html").read_text()


def card(html: str, name: str) -> int:
    return int(re.search(rf'id="{name}">([\d,]+)<', html).group(1).replace(",", ""))


def test_report_counts_match_the_parquet_files(scanned_sample):
    summary, out_dir = scanned_sample
    paths = OutputPaths.for_batch(out_dir, "loans", summary.batch_id)
    clean, quarantined = pd.read_parquet(paths.clean), pd.read_parquet(paths.quarantine)
    report = json.loads(paths.report.read_text())
    html = html_of(out_dir, summary)
    assert card(html, "rows-in") == report["rows"]["in"] == len(clean) + len(quarantined)
    assert card(html, "rows-clean") == report["rows"]["clean"] == len(clean)
    assert card(html, "rows-quarantined") == report["rows"]["quarantined"] == len(quarantined)
    per_reason = pd.Series([c for codes in quarantined[REASONS] for c in codes]).value_counts().to_dict()
    assert report["reasons"] == per_reason
    for code, rows in per_reason.items():
        assert re.search(rf"{re.escape(code)}</td><td class=\"num\">{rows:,}<", html)
    assert set(report["distributions"]) == set(report["detectors"]) >= {"ecod", "iforest", "label_model"}
    assert html.count("<svg") == len(report["detectors"])
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html) and "<script" not in html  # works offline
    assert report["class_balance"]["reference"] and report["class_balance"]["drift"] is None


def test_the_html_report_shows_each_detectors_weight_by_class(sample_out):
    from poisonguard.report.html import render_batch_report
    from poisonguard.report.scan_report import read_report
    from poisonguard.write.outputs import OutputPaths

    summary, out = sample_out
    report = read_report(OutputPaths.for_batch(out, summary.dataset, summary.batch_id).report)
    names = list(report["calibration"]["detector_weights"])
    # as a scan writes it where the reference's classes calibrate apart; a class name comes from the data
    report["calibration"]["class_weights"] = {
        "classes": ["A", "<b>B</b>", "*"],
        "weights": {name: [0.25, 3.5 + i, 0.25] for i, name in enumerate(names)},
    }
    html = render_batch_report(report, out).read_text()
    table = html[html.index('id="class-weights"'):]
    table = table[: table.index("</table>")]
    assert all(f'<th class="num">{name}</th>' in table for name in names)
    cells = "".join(f'<td class="num">{3.5 + i:.2f}</td>' for i in range(len(names)))
    assert f"<td>&lt;b&gt;B&lt;/b&gt;</td>{cells}" in table  # each detector's weight for class B, escaped
    assert "classes calibrated together" in table and "<b>B</b>" not in table


def test_values_from_the_data_are_escaped_in_the_html_report(tmp_path, prefect_harness):
    make_frame(400, seed=1).to_csv(tmp_path / "ref.csv", index=False)
    batch = make_frame(60, seed=2)
    batch.loc[0, "label"] = "<script>alert('pwned')</script>"
    batch.to_csv(tmp_path / "batch.csv", index=False)
    config = ScanConfig(label_col="label", reference=tmp_path / "ref.csv", out_dir=tmp_path / "out")
    summary = run_scan(tmp_path / "batch.csv", config)
    assert summary.reasons.get("schema:in_set:label") == 1
    html = html_of(tmp_path / "out", summary)
    assert "<script>" not in html
    assert "&lt;script&gt;alert(&#39;pwned&#39;)&lt;/script&gt;" in html


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed; .ci/run installs Debian's chromium package")
        pytest.skip("chromium is not installed here (CI installs it)")
    return found


def test_the_report_renders_in_a_headless_browser_and_shows_the_counts(scanned_sample, tmp_path):
    import matplotlib.image

    summary, out_dir = scanned_sample
    page = (out_dir / "reports" / "loans" / f"{summary.batch_id}.html").resolve().as_uri()
    flags = ["--headless", "--no-sandbox", "--disable-background-networking", "--disable-gpu",
             f"--user-data-dir={tmp_path / 'profile'}"]
    shot = tmp_path / "report.png"
    browser = _chromium()
    subprocess.run([browser, *flags, "--window-size=1280,900", f"--screenshot={shot}", page],
                   check=True, capture_output=True, timeout=120)
    dom = subprocess.run([browser, *flags, "--dump-dom", page], check=True, capture_output=True, text=True,
                         timeout=120).stdout
    for name, value in (("rows-in", summary.rows_in), ("rows-clean", summary.rows_clean),
                        ("rows-quarantined", summary.rows_quarantined)):
        assert f'id="{name}">{value:,}<' in dom
    pixels = matplotlib.image.imread(shot)
    assert pixels.shape[:2] == (900, 1280)
    assert pixels[..., :3].std() > 0.05  # a rendered page, not a blank one


def test_the_index_lists_every_batch_with_its_review_state(sample_out):
    summary, out_dir = sample_out
    decide(out_dir, summary.batch_id, "release", row_ids=None, reason="all fine", reviewer="alice")
    result = invoke("review", "list", "--out", out_dir)
    assert result.exit_code == 0 and summary.batch_id[:6] in result.output
    from poisonguard.report.html import render_index

    index = render_index(out_dir, "loans").read_text()
    assert f'href="{summary.batch_id}.html"' in index
    assert f'<td class="num">{summary.rows_quarantined:,}</td><td class="num">0</td>' in index


def test_prefect_artifacts_show_each_scan_per_dataset(prefect_harness, tmp_path, sample_batch, sample_reference):
    from prefect.artifacts import Artifact

    # A dataset of its own: other tests scan the sample as "loans", in whatever order the run takes them.
    summary = run_scan(sample_batch, ScanConfig(label_col="risk_grade", reference=sample_reference,
                                                  out_dir=tmp_path, dataset="loans-artifacts"))
    markdown = Artifact.get("poisonguard-loans-artifacts-summary")
    assert markdown is not None and summary.batch_id in markdown.data
    assert f"{summary.rows_quarantined:,}" in markdown.data and ".html" in markdown.data
    table = Artifact.get("poisonguard-loans-artifacts-reasons")
    rows = json.loads(table.data) if isinstance(table.data, str) else table.data
    assert {r["reason"]: r["rows"] for r in rows} == summary.reasons


def test_prefect_artifacts_link_the_review_app_when_it_serves_the_output(prefect_harness, tmp_path, sample_batch,
                                                                          sample_reference):
    from prefect.artifacts import Artifact

    summary = run_scan(sample_batch, ScanConfig(label_col="risk_grade", reference=sample_reference, out_dir=tmp_path,
                                                dataset="loans-linked", review_url="http://127.0.0.1:8765"))
    markdown = Artifact.get(f"poisonguard-loans-linked-batch-{summary.batch_id}").data
    assert f"(http://127.0.0.1:8765/batch/loans-linked/{summary.batch_id})" in markdown
    assert "file://" not in markdown
    pending = Artifact.get("poisonguard-loans-linked-pending").data
    rows = json.loads(pending) if isinstance(pending, str) else pending
    assert rows[0]["report"] == f"http://127.0.0.1:8765/batch/loans-linked/{summary.batch_id}"
    with pytest.raises(ConfigError, match="review_url"):
        ScanConfig(review_url="127.0.0.1:8765")


def conserved(out_dir: Path, summary) -> None:
    paths = OutputPaths.for_batch(out_dir, summary.dataset, summary.batch_id)
    clean = pd.read_parquet(paths.clean)[ROW_ID].to_numpy()
    released = released_row_ids(out_dir, summary.dataset, summary.batch_id)
    held = pd.read_parquet(paths.quarantine)[ROW_ID].to_numpy()
    still_held = held[~np.isin(held, released)]
    everything = np.concatenate([clean, released, still_held])
    assert sorted(everything.tolist()) == list(range(summary.rows_in))


def test_each_quarantined_row_says_why_in_the_quarantine_file_and_in_review_show(scanned_sample):
    summary, out_dir = scanned_sample
    held = pd.read_parquet(OutputPaths.for_batch(out_dir, "loans", summary.batch_id).quarantine)
    assert held[EXPLANATION].str.len().gt(0).all()
    ranged = held[held[REASONS].map(lambda codes: any(c.startswith("schema:range:") for c in codes))]
    assert len(ranged) and ranged[EXPLANATION].str.contains(r" = \S+ outside \[").all()
    scored = held[held[REASONS].map(lambda codes: "label:label_model" in codes)]
    assert scored[EXPLANATION].str.contains(r"label_model: p = ").all()
    listed = invoke("review", "show", summary.batch_id, "--out", out_dir, "--limit", "200", env={"COLUMNS": "400"})
    assert "why" in listed.output and ranged[EXPLANATION].iloc[0] in listed.output
    page = (out_dir / "reports" / "loans" / f"{summary.batch_id}.html").read_text()
    assert EXPLANATION in page and "(flagged at p &lt;= " in page  # the top rows' reasons in words, escaped


def test_release_and_confirm_round_trip_keeps_every_row_exactly_once(sample_out):
    summary, out_dir = sample_out
    held = pd.read_parquet(OutputPaths.for_batch(out_dir, "loans", summary.batch_id).quarantine)
    first, second = (int(i) for i in held[ROW_ID].iloc[:2])
    released = invoke("review", "release", summary.batch_id[:8], "--rows", f"{first},{second}",
                      "--reason", "plausible after checking the source", "--reviewer", "alice", "--out", out_dir)
    assert released.exit_code == 0, released.output
    confirmed = invoke("review", "confirm", summary.batch_id, "--all", "--reason", "poison", "--reviewer", "bob",
                       "--out", out_dir)
    assert confirmed.exit_code == 0, confirmed.output
    conserved(out_dir, summary)
    clean = pd.read_parquet(OutputPaths.for_batch(out_dir, "loans", summary.batch_id).clean)
    released_file, = (out_dir / "clean" / "loans").glob("*.released-*.parquet")
    assert list(pd.read_parquet(released_file).columns) == list(clean.columns)
    entries = AuditLog(out_dir).entries()
    assert [(e["action"], e["reviewer"], len(e["row_ids"])) for e in entries] == [
        ("release", "alice", 2), ("confirm", "bob", summary.rows_quarantined - 2)]
    shown = invoke("review", "show", summary.batch_id, "--row", first, "--out", out_dir)
    assert "released" in shown.output and "alice" in shown.output
    assert invoke("review", "list", "--status", "pending", "--out", out_dir).output.startswith("no batches")


def test_a_row_is_decided_once(sample_out):
    summary, out_dir = sample_out
    held = pd.read_parquet(OutputPaths.for_batch(out_dir, "loans", summary.batch_id).quarantine)
    row = int(held[ROW_ID].iloc[0])
    decide(out_dir, summary.batch_id, "release", row_ids=[row], reason="fine", reviewer="alice")
    again = invoke("review", "release", summary.batch_id, "--rows", row, "--reason", "again", "--out", out_dir)
    assert again.exit_code == 2
    assert f"row {row} of batch {summary.batch_id} was already released by alice" in again.output
    with pytest.raises(ReviewError, match="already released"):
        decide(out_dir, summary.batch_id, "confirm", row_ids=[row], reason="poison after all")
    not_held = int(np.setdiff1d(np.arange(summary.rows_in), held[ROW_ID])[0])
    with pytest.raises(ReviewError, match=f"row\\(s\\) {not_held} .* are not quarantined"):
        decide(out_dir, summary.batch_id, "confirm", row_ids=[not_held], reason="x")
    assert len(list((out_dir / "clean" / "loans").glob("*.released-*"))) == 1
    conserved(out_dir, summary)


@pytest.mark.parametrize("tamper", ["edit", "delete", "reorder"])
def test_audit_log_tampering_is_detected(sample_out, tamper):
    summary, out_dir = sample_out
    held = pd.read_parquet(OutputPaths.for_batch(out_dir, "loans", summary.batch_id).quarantine)[ROW_ID]
    for i, row in enumerate(held.iloc[:3]):
        decide(out_dir, summary.batch_id, "confirm", row_ids=[int(row)], reason=f"poison {i}", reviewer="bob")
    assert invoke("review", "audit", "--verify", "--out", out_dir).exit_code == 0
    log = AuditLog(out_dir).path
    lines = log.read_text().splitlines()
    if tamper == "edit":
        lines[1] = lines[1].replace('"bob"', '"eve"')
    elif tamper == "delete":
        del lines[1]
    else:
        lines[0], lines[1] = lines[1], lines[0]
    log.write_text("\n".join(lines) + "\n")
    result = invoke("review", "audit", "--verify", "--out", out_dir)
    assert result.exit_code == 3 and "tampered" in result.output
    with pytest.raises(ReviewError, match="fails verification"):
        decide(out_dir, summary.batch_id, "confirm", row_ids=[int(held.iloc[5])], reason="x")


def test_concurrent_reviews_of_the_same_row_are_serialised(sample_out):
    summary, out_dir = sample_out
    row = int(pd.read_parquet(OutputPaths.for_batch(out_dir, "loans", summary.batch_id).quarantine)[ROW_ID].iloc[0])
    command = [sys.executable, "-c", "from poisonguard.cli import main; main()", "review", "release",
               summary.batch_id, "--rows", str(row), "--reason", "race", "--out", str(out_dir)]
    processes = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(2)]
    results = [(p.wait(timeout=120), p.communicate()[1]) for p in processes]
    assert sorted(code for code, _ in results) == [0, 2], results
    assert any("already released" in err for _, err in results)
    assert AuditLog(out_dir).verify().ok and len(AuditLog(out_dir).entries()) == 1
    conserved(out_dir, summary)


def test_a_reviewed_batch_is_not_rescanned_over_its_decisions(sample_out, sample_batch, sample_reference):
    summary, out_dir = sample_out
    decide(out_dir, summary.batch_id, "confirm", row_ids=None, reason="poison", reviewer="bob")
    config = ScanConfig(label_col="risk_grade", reference=sample_reference, out_dir=out_dir, dataset="loans",
                        force=True)
    with pytest.raises(ConfigError, match="review decision"):
        run_scan(sample_batch, config)


def test_csv_exports_escape_spreadsheet_formulas(tmp_path):
    rows = pd.DataFrame({"note": ["=HYPERLINK(\"http://x\")", "+1", "-2", "@SUM(A1)", "plain", None],
                         "amount": [-5.0, 1.0, 2.0, 3.0, 4.0, 5.0]})
    rows[REASONS] = [["schema:range:amount"]] * 6
    export_csv(rows, tmp_path / "rows.csv")
    back = pd.read_csv(tmp_path / "rows.csv", keep_default_na=False)
    assert back["note"].tolist() == ["'=HYPERLINK(\"http://x\")", "'+1", "'-2", "'@SUM(A1)", "plain", ""]
    assert back["amount"].iloc[0] == -5.0  # numbers are numbers, not formulas
    assert spreadsheet_text(-3) == -3


def test_a_shifted_class_balance_is_reported_as_drift():
    reference = class_counts(pd.Series(["A"] * 500 + ["B"] * 500))
    assert class_balance(pd.Series(["A"] * 210 + ["B"] * 190), reference)["drift"] is None
    shifted = class_balance(pd.Series(["A"] * 320 + ["B"] * 80), reference)
    assert "'A' is 80.0% of the batch and 50.0% of the reference" in shifted["drift"]
    assert "not in the reference: 'C'" in class_balance(pd.Series(["A", "B", "C"] * 50), reference)["drift"]


def test_a_shifted_numeric_column_is_reported_as_drift():
    from poisonguard.report.figures import feature_drift

    reference = make_frame(400, seed=1)
    same, shifted = make_frame(300, seed=2), make_frame(300, seed=3)
    shifted["x2"] += 1.5
    kinds = {"x1": "numeric", "x2": "numeric", "count": "numeric", "colour": "categorical"}
    assert feature_drift(same, reference, kinds) == []
    drifted = feature_drift(shifted, reference, kinds)
    assert [d["column"] for d in drifted] == ["x2"] and "'x2' is distributed differently" in drifted[0]["message"]
