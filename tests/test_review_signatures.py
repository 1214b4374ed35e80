"""Signed review decisions: an entry appended with a recomputed chain but without a reviewer's key is caught."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from poisonguard.cli import app
from poisonguard.review.audit import entry_hash

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture()
def reviewed(signed_out) -> tuple[str, Path, Path, Path]:
    """The batch id, the output directory, the reviewers file naming alice, and alice's private key."""
    summary, out, reviewers, key = signed_out
    return summary.batch_id, out, reviewers, key


def forge(out: Path, **fields) -> None:
    """Append an entry as an attacker with write access but no key would: a correct seq, prev_hash and hash,
    alice's key id and the signature of her last entry."""
    log = out / "review" / "audit.jsonl"
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    entry = {**entries[-1], **fields, "seq": len(entries) + 1, "prev_hash": entries[-1]["hash"]}
    entry["hash"] = entry_hash(entry)
    with log.open("a") as handle:
        handle.write(json.dumps(entry, sort_keys=True) + "\n")


def test_signed_decisions_verify_and_a_forged_entry_with_a_recomputed_chain_does_not(reviewed):
    batch, out, reviewers, key = reviewed
    first = invoke("review", "confirm", batch, "--rows", _first_row(out), "--reason", "label flip", "-o", out,
                   "--key", key, "--reviewers", reviewers)
    assert first.exit_code == 0, first.output
    assert "by alice" in first.output
    assert invoke("review", "audit", "--verify", "-o", out, "--reviewers", reviewers).exit_code == 0

    forge(out, action="confirm", row_ids=[_second_row(out)], reviewer="alice", reason="forged")
    unkeyed = invoke("review", "audit", "--verify", "-o", out)
    assert unkeyed.exit_code == 0  # the chain alone cannot tell: this is what signatures are for
    checked = invoke("review", "audit", "--verify", "-o", out, "--reviewers", reviewers)
    assert checked.exit_code == 3, checked.output
    assert "entry 2" in checked.output and "signature does not match" in checked.output
    assert "entry 1" not in checked.output


def test_a_decision_with_a_key_no_reviewer_holds_is_refused(reviewed, tmp_path):
    batch, out, reviewers, _ = reviewed
    invoke("keys", "generate", "--source", "mallory", "--key-id", "mallory-k", "--key-dir", tmp_path / "other")
    refused = invoke("review", "release", batch, "--all", "--reason", "x", "-o", out,
                     "--key", tmp_path / "other" / "mallory-k.pem", "--reviewers", reviewers)
    assert refused.exit_code == 2 and "belongs to no reviewer" in refused.output
    assert not (out / "review" / "audit.jsonl").exists()


def _quarantined(out: Path) -> list[int]:
    import pandas as pd

    (path,) = (out / "quarantine" / "loans").glob("*.parquet")
    return sorted(pd.read_parquet(path, columns=["_row_id"])["_row_id"].tolist())


def _first_row(out: Path) -> int:
    return _quarantined(out)[0]


def _second_row(out: Path) -> int:
    return _quarantined(out)[1]
