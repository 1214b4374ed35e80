"""Provenance: signed manifests, the trust store and the replay ledger, checked through the GX suite.

Each tampering case must fail with its own reason code and nothing else, so a reviewer sees the root cause.
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pandas as pd
import pytest
from conftest import make_frame

from poisonguard import ROW_ID
from poisonguard.errors import ConfigError, InputError
from poisonguard.expectations.validate import SchemaValidator
from poisonguard.ingest.read import read_batch
from poisonguard.provenance.checks import FAILED, UNSIGNED, VERIFIED, assess_provenance
from poisonguard.provenance.ledger import Ledger, LedgerEntry, content_sha256
from poisonguard.provenance.manifest import (
    generate_key,
    load_private_key,
    manifest_fields,
    manifest_path_for,
    read_manifest,
    sign_manifest,
    write_manifest,
)
from poisonguard.provenance.trust import add_key, load_trust_store

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def validator() -> SchemaValidator:
    return SchemaValidator()


class Source:
    """A data source with a key in a trust store, able to write and sign batches in ``root``."""

    def __init__(self, root: Path, source_id: str = "bank-a", datasets: list[str] | None = None) -> None:
        self.root = root
        self.source_id = source_id
        self.trust_path = root / "trust.json"
        self.key = generate_key(root / "keys", f"{source_id}-k1")
        add_key(self.trust_path, source_id, self.key.key_id, self.key.public_key, datasets=datasets or ["loans"])

    def write(self, name: str = "batch.csv", seed: int = 0, n_rows: int = 60) -> Path:
        path = self.root / name
        make_frame(n_rows, seed=seed).to_csv(path, index=False)
        return path

    def sign(self, path: Path, *, dataset: str = "loans", created_at: datetime = NOW, key_path: Path | None = None,
             key_id: str | None = None) -> Path:
        batch = read_batch(path, dataset=dataset)
        fields = manifest_fields(
            dataset=dataset, source_id=self.source_id, key_id=key_id or self.key.key_id, file_name=path.name,
            sha256=batch.sha256, size_bytes=batch.size_bytes, row_count=batch.n_rows,
            columns=[c for c in batch.frame.columns if c != ROW_ID], created_at=created_at,
        )
        private_key = load_private_key(key_path or self.key.private_key_path)
        return write_manifest(sign_manifest(fields, private_key), manifest_path_for(path))


@pytest.fixture()
def source(tmp_path) -> Source:
    return Source(tmp_path)


def assess(path: Path, trust_path: Path, validator, *, ledger: Ledger | None = None, required: bool = True,
           dataset: str = "loans", now: datetime = NOW):
    return assess_provenance(
        read_batch(path, dataset=dataset), dataset, load_trust_store(trust_path), ledger, required=required,
        max_age_seconds=7 * 24 * 3600, clock_skew_seconds=300, now=now, validator=validator,
    )


def codes(outcome) -> list[str]:
    return [f["code"] for f in outcome.failures]


def edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_a_signed_batch_from_a_trusted_source_is_verified(source, validator):
    batch = source.write()
    source.sign(batch)
    outcome = assess(batch, source.trust_path, validator)
    assert outcome.status == VERIFIED and outcome.passed, outcome.failures
    assert (outcome.source_id, outcome.key_id) == ("bank-a", "bank-a-k1")
    assert {c["result"] for c in outcome.checks} == {"pass", "not applicable"}


def test_reindenting_a_manifest_keeps_its_signature_valid(source, validator):
    batch = source.write()
    manifest = source.sign(batch)
    manifest.write_text(json.dumps(json.loads(manifest.read_text()), indent=8, sort_keys=False))
    assert assess(batch, source.trust_path, validator).status == VERIFIED


def _other_key(source: Source, tmp_path: Path) -> Path:
    return generate_key(tmp_path / "other-keys", "bank-a-k1").private_key_path


def _revoke(source: Source) -> None:
    edit_json(source.trust_path, lambda d: d["sources"]["bank-a"]["keys"]["bank-a-k1"].update(revoked=True))


def _expire(source: Source) -> None:
    expired = (NOW - timedelta(days=1)).isoformat().replace("+00:00", "Z")
    edit_json(source.trust_path, lambda d: d["sources"]["bank-a"]["keys"]["bank-a-k1"].update(expires_at=expired))


TAMPERING = {
    "manifest missing": (lambda s, b, t: manifest_path_for(b).unlink(), "provenance:manifest_missing"),
    "malformed json": (lambda s, b, t: manifest_path_for(b).write_text('{"dataset": "loans",'),
                       "provenance:manifest_malformed"),
    "field missing": (lambda s, b, t: edit_json(manifest_path_for(b), lambda d: d.pop("row_count")),
                      "provenance:manifest_invalid"),
    "field of wrong type": (lambda s, b, t: edit_json(manifest_path_for(b), lambda d: d.update(row_count="60")),
                            "provenance:manifest_invalid"),
    "unknown key": (lambda s, b, t: s.sign(b, key_id="bank-a-k9"), "provenance:unknown_key"),
    "signed by another key under a known id": (lambda s, b, t: s.sign(b, key_path=_other_key(s, t)),
                                               "provenance:signature_invalid"),
    "valid signature of a different file": (
        lambda s, b, t: manifest_path_for(b).write_text(s.sign(s.write("other.csv", seed=9)).read_text()),
        "provenance:sha256_mismatch",
    ),
    "file modified after signing": (lambda s, b, t: b.write_bytes(b.read_bytes().replace(b"red", b"rez", 1)),
                                    "provenance:sha256_mismatch"),
    "manifest edited after signing": (lambda s, b, t: edit_json(manifest_path_for(b),
                                                                lambda d: d.update(row_count=61)),
                                      "provenance:signature_invalid"),
    "revoked key": (lambda s, b, t: _revoke(s), "provenance:key_revoked"),
    "expired key": (lambda s, b, t: _expire(s), "provenance:key_expired"),
    "manifest for another dataset": (lambda s, b, t: s.sign(b, dataset="payments"),
                                           "provenance:dataset_mismatch"),
    "timestamp in the future": (lambda s, b, t: s.sign(b, created_at=NOW + timedelta(hours=1)),
                                "provenance:created_in_future"),
    "manifest too old": (lambda s, b, t: s.sign(b, created_at=NOW - timedelta(days=30)),
                         "provenance:manifest_too_old"),
    "unknown source": (lambda s, b, t: edit_json(s.trust_path, lambda d: d["sources"].update(
        {"bank-b": d["sources"].pop("bank-a")})), "provenance:unknown_source"),
}


@pytest.mark.parametrize("tamper, code", TAMPERING.values(), ids=TAMPERING.keys())
def test_each_tampering_fails_with_its_own_reason_code(source, validator, tmp_path, tamper, code):
    batch = source.write()
    source.sign(batch)
    tamper(source, batch, tmp_path)
    outcome = assess(batch, source.trust_path, validator)
    assert outcome.status == FAILED
    assert codes(outcome) == [code]
    assert outcome.failures[0]["message"]


def test_a_source_may_only_deliver_its_allowed_datasets(tmp_path, validator):
    source = Source(tmp_path, datasets=["loans"])
    batch = source.write()
    source.sign(batch, dataset="payments")
    outcome = assess(batch, source.trust_path, validator, dataset="payments")
    assert codes(outcome) == ["provenance:dataset_not_allowed"]
    assert "'bank-a' is not allowed to deliver dataset 'payments'" in outcome.failures[0]["message"]


def test_a_missing_manifest_is_allowed_when_provenance_is_not_required(source, validator):
    outcome = assess(source.write(), source.trust_path, validator, required=False)
    assert outcome.status == UNSIGNED and outcome.passed


def _delivered(ledger: Ledger, path: Path) -> None:
    batch = read_batch(path, dataset="loans")
    ledger.record(LedgerEntry("2026-11-22T00:00:00+00:00", "loans", batch.batch_id, batch.sha256,
                              content_sha256(batch.frame), "bank-a", "bank-a-k1", str(path), "clean", 60, 60, 0))


def test_a_replayed_batch_is_caught_by_its_file_digest(source, validator, tmp_path):
    batch = source.write()
    source.sign(batch)
    ledger = Ledger(tmp_path / "ledger.sqlite")
    assert assess(batch, source.trust_path, validator, ledger=ledger).passed
    _delivered(ledger, batch)
    outcome = assess(batch, source.trust_path, validator, ledger=ledger)
    assert codes(outcome) == ["provenance:replay"] and outcome.exact_replay


def test_a_replay_with_rows_reordered_is_caught_by_its_content_digest(source, validator, tmp_path):
    batch = source.write()
    ledger = Ledger(tmp_path / "ledger.sqlite")
    _delivered(ledger, batch)
    reordered = tmp_path / "reordered.csv"
    frame = make_frame(60, seed=0)
    frame.iloc[::-1][list(reversed(frame.columns))].to_csv(reordered, index=False)
    source.sign(reordered)
    outcome = assess(reordered, source.trust_path, validator, ledger=ledger)
    assert codes(outcome) == ["provenance:replay"]
    assert outcome.replay_of["match"] == "content" and not outcome.exact_replay


def test_a_rejected_batch_is_not_a_delivery_so_it_may_be_resent(source, validator, tmp_path):
    batch = source.write()
    source.sign(batch)
    ledger = Ledger(tmp_path / "ledger.sqlite")
    read = read_batch(batch, dataset="loans")
    ledger.record(LedgerEntry("2026-11-22T00:00:00+00:00", "loans", read.batch_id, read.sha256, None,
                              None, None, str(batch), "rejected"))
    assert assess(batch, source.trust_path, validator, ledger=ledger).passed


def test_content_digest_ignores_row_order_column_order_and_format(tmp_path):
    frame = make_frame(50, seed=3)
    frame.to_parquet(tmp_path / "a.parquet", index=False)
    frame.sample(frac=1.0, random_state=1)[list(reversed(frame.columns))].to_csv(tmp_path / "b.csv", index=False)
    a = read_batch(tmp_path / "a.parquet").frame
    b = read_batch(tmp_path / "b.csv").frame
    assert content_sha256(a) == content_sha256(b)
    changed = b.copy()
    changed.loc[0, "count"] = changed.loc[0, "count"] + 1
    assert content_sha256(changed) != content_sha256(a)
    with_a_duplicate = pd.concat([a, a.iloc[:1]], ignore_index=True)
    assert content_sha256(with_a_duplicate) != content_sha256(a)  # a multiset: duplicates count


def test_the_ledger_refuses_updates_and_deletes(tmp_path):
    ledger = Ledger(tmp_path / "ledger.sqlite")
    ledger.record(LedgerEntry("t", "loans", "b1", "0" * 64, None, None, None, None, "clean"))
    with sqlite3.connect(ledger.path) as connection:
        for statement in ("UPDATE batches SET outcome = 'rejected'", "DELETE FROM batches"):
            with pytest.raises(sqlite3.IntegrityError, match="append-only"):
                connection.execute(statement)
    assert [e.outcome for e in ledger.entries()] == ["clean"]


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "trust store not found"),
        ("{not json", "not valid JSON"),
        ('{"sources": {"bank-a": {"keys": {"k": {"public_key": "bm90IGEga2V5"}}}}}', "is not a base64 32-byte"),
        ('{"sources": {"bank-a": {"keys": {"k": {"public_key": "%s", "revoked": "no"}}}}}', "'revoked' must be"),
        ('["bank-a"]', "must be a JSON object"),
    ],
)
def test_a_missing_or_broken_trust_store_is_a_configuration_error(tmp_path, content, message):
    path = tmp_path / "trust.json"
    if content is not None:
        key = generate_key(tmp_path, "k").public_key
        path.write_text(content.replace("%s", key))
    with pytest.raises(ConfigError, match=message) as raised:
        load_trust_store(path)
    assert str(path) in str(raised.value)


def test_private_keys_are_written_owner_only_and_never_overwritten(tmp_path):
    key = generate_key(tmp_path / "keys", "bank-a-k1")
    assert stat.S_IMODE(os.stat(key.private_key_path).st_mode) == 0o600
    with pytest.raises(InputError, match="already exists"):
        generate_key(tmp_path / "keys", "bank-a-k1")


def test_a_manifest_round_trips_through_its_file(source):
    batch = source.write()
    manifest = read_manifest(source.sign(batch))
    assert manifest.source_id == "bank-a" and manifest.row_count == 60
    assert manifest.created_at == "2026-11-23T12:00:00Z"
