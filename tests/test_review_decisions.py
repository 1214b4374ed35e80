"""Review decisions by filter and by file, undo as a new decision, and the status file beside the quarantine."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd
import pytest
from test_review import conserved, invoke

from poisonguard import REASONS, ROW_ID, STATUS
from poisonguard.errors import InputError
from poisonguard.review.audit import AuditLog, ReviewError
from poisonguard.review.batches import find_batch, released_row_ids
from poisonguard.review.decisions import complete_undo, decide, status_path
from poisonguard.review.filters import RowFilter, evidence_order, parse_where
from poisonguard.write.committed import list_batch, read_listing
from poisonguard.write.outputs import OutputPaths


def held(out_dir, summary) -> pd.DataFrame:
    return pd.read_parquet(OutputPaths.for_batch(out_dir, summary.dataset, summary.batch_id).quarantine)


def only_reason_codes(rows: pd.DataFrame) -> Counter:
    return Counter(codes[0] for codes in rows[REASONS] if len(codes) == 1)


def test_where_is_read_into_clauses_and_refuses_what_it_cannot_read():
    parsed = parse_where("only_reason=schema:range:f5 and label=B; column.amount=12", columns=["amount"])
    assert parsed == RowFilter(only_reason="schema:range:f5", label="B", columns=(("amount", "12"),))
    assert parse_where("amount=3", columns=["amount"]).columns == (("amount", "3"),)
    assert parsed.describe() == "only_reason=schema:range:f5 and label=B and column.amount=12"
    for text, message in (("reason", "not KEY=VALUE"), ("colour=red", "unknown key 'colour'"),
                          ("status=maybe", "status='maybe'"), ("label=A and label=B", "given twice")):
        with pytest.raises(InputError, match=message):
            parse_where(text, columns=["amount"])


def test_filters_match_rows_by_reason_detector_status_label_and_column():
    rows = pd.DataFrame({
        REASONS: [["schema:range:f5"], ["schema:range:f5", "outlier:ecod"], ["label:label_model"], []],
        STATUS: ["pending", "released", "pending", "pending"],
        "grade": ["A", "B", "B", "A"],
        "amount": [12.0, 12.5, np.nan, 3.0],
    })
    assert RowFilter(reason="schema:range:f5").mask(rows, "grade").tolist() == [True, True, False, False]
    assert RowFilter(only_reason="schema:range:f5").mask(rows, "grade").tolist() == [True, False, False, False]
    assert RowFilter(detector="ecod").mask(rows, "grade").tolist() == [False, True, False, False]
    assert RowFilter(status="pending", label="B").mask(rows, "grade").tolist() == [False, False, True, False]
    assert RowFilter(columns=(("amount", "12"),)).mask(rows, "grade").tolist() == [True, False, False, False]
    with pytest.raises(InputError, match="no column 'colour'"):
        RowFilter(columns=(("colour", "red"),)).mask(rows, "grade")


def test_rows_are_ordered_by_evidence_not_by_their_count_of_reasons():
    rows = pd.DataFrame({
        REASONS: [["schema:range:a", "schema:range:b", "schema:range:c"], ["label:label_model"], ["outlier:ecod"]],
        "_pvalue_label_model": [np.nan, 1e-7, np.nan],
        "_pvalue_ecod": [np.nan, np.nan, 1e-4],
        "_score_label_model": [np.nan, 16.0, np.nan],
    })
    assert evidence_order(rows).tolist() == [1, 2, 0]


def test_a_filtered_release_takes_every_pending_match_in_one_decision(sample_out):
    summary, out_dir = sample_out
    rows = held(out_dir, summary)
    code, expected = only_reason_codes(rows).most_common(1)[0]
    result = invoke("review", "release", summary.batch_id, "--where", f"only_reason={code}", "--reason",
                    "rule too tight", "--reviewer", "alice", "--out", out_dir)
    assert result.exit_code == 0, result.output
    entry, = AuditLog(out_dir).entries()
    assert len(entry["row_ids"]) == expected and entry["where"] == f"only_reason={code}"
    assert len(released_row_ids(out_dir, summary.dataset, summary.batch_id)) == expected
    again = invoke("review", "release", summary.batch_id, "--where", f"only_reason={code}", "--reason", "again",
                   "--out", out_dir)
    assert again.exit_code == 2 and "no pending row" in again.output
    conserved(out_dir, summary)


def test_rows_from_a_file_of_ids_or_an_exported_csv(sample_out, tmp_path):
    summary, out_dir = sample_out
    ids = held(out_dir, summary)[ROW_ID].astype(int).tolist()
    (tmp_path / "ids.txt").write_text("\n".join(map(str, ids[:3])) + "\n")
    assert invoke("review", "confirm", summary.batch_id, "--rows-from", tmp_path / "ids.txt", "--reason", "poison",
                  "--out", out_dir).exit_code == 0
    exported = tmp_path / "rows.csv"
    invoke("review", "show", summary.batch_id, "--status", "pending", "--csv", exported, "--out", out_dir)
    result = invoke("review", "release", summary.batch_id, "--rows-from", exported, "--reason", "fine",
                    "--out", out_dir)
    assert result.exit_code == 0, result.output
    assert sorted(released_row_ids(out_dir, summary.dataset, summary.batch_id).tolist()) == sorted(ids[3:])
    (tmp_path / "bad.txt").write_text("12\nrow 13\n")
    bad = invoke("review", "release", summary.batch_id, "--rows-from", tmp_path / "bad.txt", "--reason", "x",
                 "--out", out_dir)
    assert bad.exit_code == 2 and "line 2" in bad.output


def test_undo_returns_rows_to_pending_and_takes_released_ones_out_of_the_clean_area(sample_out):
    summary, out_dir = sample_out
    ids = held(out_dir, summary)[ROW_ID].astype(int).tolist()
    decide(out_dir, summary.batch_id, "release", row_ids=ids[:5], reason="fine", reviewer="alice")
    decide(out_dir, summary.batch_id, "confirm", row_ids=ids[5:7], reason="poison", reviewer="alice")
    undo = invoke("review", "undo", summary.batch_id, "--rows", f"{ids[0]},{ids[5]}", "--reason", "misclicked",
                  "--reviewer", "bob", "--out", out_dir)
    assert undo.exit_code == 0, undo.output
    entries = AuditLog(out_dir).entries()
    assert entries[-1]["action"] == "undo" and entries[-1]["supersedes"] == [1, 2]
    assert sorted(released_row_ids(out_dir, summary.dataset, summary.batch_id).tolist()) == sorted(ids[1:5])
    assert AuditLog(out_dir).verify().ok
    status = pd.read_parquet(status_path(find_batch(out_dir, summary.batch_id)))
    by_row = dict(zip(status[ROW_ID], status[STATUS]))
    assert by_row[ids[0]] == by_row[ids[5]] == "pending" and by_row[ids[1]] == "released"
    assert by_row[ids[6]] == "confirmed" and len(status) == len(ids)
    with pytest.raises(ReviewError, match="pending: there is no decision to undo"):
        decide(out_dir, summary.batch_id, "undo", row_ids=[ids[0]], reason="twice", reviewer="bob")
    # The undone rows can be decided again, and every row is then in exactly one place.
    decide(out_dir, summary.batch_id, "confirm", row_ids=None, reason="rest is poison", reviewer="bob")
    list_batch(out_dir, find_batch(out_dir, summary.batch_id).report)
    listed = read_listing(out_dir, summary.dataset)["files"]
    assert not any("released-000001" in name for name in listed) and any("released-000003" in n for n in listed)
    conserved(out_dir, summary)


def test_an_interrupted_undo_is_finished_by_the_next_decision(sample_out):
    summary, out_dir = sample_out
    ids = held(out_dir, summary)[ROW_ID].astype(int).tolist()
    decide(out_dir, summary.batch_id, "release", row_ids=ids[:4], reason="fine", reviewer="alice")
    log = AuditLog(out_dir)
    release_file = log.entries()[0]["output"]
    # The undo's entry is durable but its files were never moved: a crash right after the append.
    with log.locked():
        entry = log.append({"at": "2026-12-04T00:00:00+00:00", "reviewer": "bob", "action": "undo",
                            "dataset": summary.dataset, "batch_id": summary.batch_id, "row_ids": [ids[0]],
                            "reason": "crash", "supersedes": [1], "withdrawn": [release_file],
                            "output": f"clean/{summary.dataset}/{summary.batch_id}.released-000002.parquet"})
    assert any("still in the clean area" in p for p in log.verify().problems)
    decide(out_dir, summary.batch_id, "confirm", row_ids=[ids[4]], reason="poison", reviewer="bob")
    assert log.verify().ok
    assert sorted(released_row_ids(out_dir, summary.dataset, summary.batch_id).tolist()) == sorted(ids[1:4])
    complete_undo(out_dir, entry)  # finishing it again changes nothing
    assert log.verify().ok


def test_a_batch_rejected_for_its_structure_is_confirmed_as_a_batch_and_never_released(tmp_path, prefect_harness):
    from conftest import make_frame

    from poisonguard.config import ScanConfig
    from poisonguard.flows.scan import run_scan

    make_frame(400, seed=0).to_csv(tmp_path / "ref.csv", index=False)
    make_frame(120, seed=1).drop(columns="x2").to_csv(tmp_path / "broken.csv", index=False)
    out = tmp_path / "out"
    summary = run_scan(tmp_path / "broken.csv", ScanConfig(label_col="label", reference=tmp_path / "ref.csv",
                                                            out_dir=out))
    assert summary.status == "rejected" and summary.rows_quarantined == 120
    refused = invoke("review", "release", summary.batch_id, "--all", "--reason", "x", "--out", out)
    assert refused.exit_code == 2 and "rejected for its structure" in refused.output
    confirmed = invoke("review", "confirm", summary.batch_id, "--all", "--reason", "broken export", "--out", out)
    assert confirmed.exit_code == 0, confirmed.output
    listed = invoke("review", "list", "--status", "pending", "--out", out)
    assert listed.output.startswith("no batches")


def test_entries_cut_from_the_end_of_the_log_are_caught_by_the_ledgers_copy_of_its_head(sample_out):
    summary, out_dir = sample_out
    ids = held(out_dir, summary)[ROW_ID].astype(int).tolist()
    for i in range(3):
        decide(out_dir, summary.batch_id, "confirm", row_ids=[ids[i]], reason=f"poison {i}", reviewer="bob")
    log = AuditLog(out_dir)
    assert log.verify().ok and log.mirrored_head() == (3, log.entries()[-1]["hash"])
    lines = log.path.read_text().splitlines()
    log.path.write_text("\n".join(lines[:2]) + "\n")  # the chain of the two left is intact
    problems = log.verify().problems
    assert any("entries were cut from its end" in p for p in problems)
    result = invoke("review", "audit", "--verify", "--out", out_dir)
    assert result.exit_code == 3 and "cut from its end" in result.output
