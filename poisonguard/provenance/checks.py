"""Gather the facts of one batch's provenance into a one-row table, and explain its failed checks.

The facts are what can be established about the batch: is there a manifest, is its source trusted for
this dataset, is the key known and in force, does the signature verify, do the signed digest, row count
and columns match the file read, how old is it, has the same content been delivered before. A fact that
cannot be established because an earlier one failed (no signature check without a known key) is left
null, so that only root causes fail: the Great Expectations suite in
``poisonguard.expectations.provenance`` skips nulls.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from poisonguard import ROW_ID
from poisonguard.expectations.provenance import provenance_suite, run_provenance_suite
from poisonguard.expectations.validate import SchemaValidator
from poisonguard.ingest.read import Batch
from poisonguard.provenance.ledger import Ledger, LedgerEntry, Replay, content_sha256
from poisonguard.provenance.manifest import (
    Manifest,
    ManifestError,
    manifest_path_for,
    read_manifest,
    signature_is_valid,
)
from poisonguard.provenance.trust import TrustStore, load_trust_store

if TYPE_CHECKING:
    from poisonguard.config import ProvenanceSettings

VERIFIED = "verified"
FAILED = "failed"
UNSIGNED = "unsigned"  # no manifest, and none was required
NOT_CHECKED = "not_checked"  # no trust store given


@dataclass(frozen=True)
class ProvenanceEvidence:
    """The one-row fact table (``facts``) plus what a report needs to explain it."""

    facts: dict[str, Any]
    manifest_path: Path
    manifest: Manifest | None
    replay: Replay | None
    content_sha256: str | None
    manifest_error: str | None = None


@dataclass
class ProvenanceOutcome:
    status: str
    required: bool
    manifest_path: str | None = None
    source_id: str | None = None
    key_id: str | None = None
    content_sha256: str | None = None
    checks: list[dict[str, Any]] = field(default_factory=list)
    failures: list[dict[str, str]] = field(default_factory=list)
    replay_of: dict[str, Any] | None = None

    @property
    def passed(self) -> bool:
        return self.status != FAILED

    @property
    def exact_replay(self) -> bool:
        """The very same file bytes were delivered before: its outputs exist and must not be rewritten."""
        return bool(self.replay_of) and self.replay_of["match"] == "file"

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "required": self.required,
            "manifest": self.manifest_path,
            "source_id": self.source_id,
            "key_id": self.key_id,
            "content_sha256": self.content_sha256,
            "checks": self.checks,
            "failures": self.failures,
            "replay_of": self.replay_of,
        }


@dataclass(frozen=True)
class RowsRead:
    """What reading a batch's rows established: how many, which columns (file order), their content digest.

    A whole batch gives them from its frame (:meth:`of`); a batch read in chunks, from a pass over it.
    """

    n_rows: int | None
    columns: list[str] | None
    content_sha256: str | None

    @classmethod
    def of(cls, batch: Batch) -> RowsRead:
        if batch.frame is None:
            return cls(None, None, None)
        columns = [c for c in batch.frame.columns if c != ROW_ID]
        return cls(len(batch.frame), columns, content_sha256(batch.frame))


def gather_evidence(
    batch: Batch,
    dataset: str,
    trust_store: TrustStore,
    ledger: Ledger | None,
    now: datetime,
    manifest_path: Path | None = None,
    rescan_of: str | None = None,
    rows: RowsRead | None = None,
) -> ProvenanceEvidence:
    """Establish every provenance fact about ``batch`` as of ``now``.

    ``rescan_of`` is a batch id whose earlier deliveries do not count as replays (a ``--force`` rescan).
    ``rows`` gives what reading the rows established; by default it comes from ``batch.frame``.
    """
    manifest_path = Path(manifest_path) if manifest_path else manifest_path_for(batch.source_path)
    rows = rows or RowsRead.of(batch)
    content = rows.content_sha256
    replay = ledger.find_replay(batch.sha256, content, exclude_batch_id=rescan_of) if ledger else None
    facts: dict[str, Any] = {
        ROW_ID: 0,
        "manifest_present": manifest_path.is_file(),
        "manifest_json_valid": None,
        "manifest_fields_valid": None,
        "source_id": None,
        "dataset_matches": None,
        "dataset_allowed": None,
        "key_known": None,
        "key_revoked": None,
        "key_expired": None,
        "signature_valid": None,
        "sha256_signed": None,
        "sha256_read": batch.sha256,
        "row_count_signed": None,
        "row_count_read": rows.n_rows,
        "columns_signed": None,
        "columns_read": json.dumps(rows.columns) if rows.columns is not None else None,
        "age_seconds": None,
        "replay_of": replay.first.batch_id if replay else None,
        "replay_of_checked": ledger is not None,
    }
    manifest, error = None, None
    if facts["manifest_present"]:
        try:
            manifest = read_manifest(manifest_path)
            facts["manifest_json_valid"] = facts["manifest_fields_valid"] = True
        except ManifestError as exc:
            error = str(exc)
            facts["manifest_json_valid"] = exc.code != "provenance:manifest_malformed"
            facts["manifest_fields_valid"] = False if facts["manifest_json_valid"] else None
    if manifest is not None:
        facts.update(_manifest_facts(manifest, dataset, trust_store, now))
    return ProvenanceEvidence(facts, manifest_path, manifest, replay, content, error)


def _manifest_facts(manifest: Manifest, dataset: str, trust_store: TrustStore, now: datetime) -> dict[str, Any]:
    # The manifest's claims (digest, rows, columns, dataset, age) are compared only once its signature
    # verifies: an unauthenticated claim proves nothing, and a forged one would only add noise to the
    # root cause (unknown source or key, or a signature that does not verify).
    facts: dict[str, Any] = {"source_id": manifest.source_id}
    source = trust_store.sources.get(manifest.source_id)
    if source is None:
        return facts
    facts["dataset_allowed"] = source.allows(dataset)
    key = source.keys.get(manifest.key_id)
    facts["key_known"] = key is not None
    if key is None:
        return facts
    facts["key_revoked"] = key.revoked
    facts["key_expired"] = key.expired(now)
    facts["signature_valid"] = signature_is_valid(manifest, key.public_key)
    if facts["signature_valid"]:
        facts.update(
            dataset_matches=manifest.dataset == dataset,
            sha256_signed=manifest.sha256,
            row_count_signed=manifest.row_count,
            columns_signed=json.dumps(manifest.columns),
            age_seconds=(now - manifest.created_at_time()).total_seconds(),
        )
    return facts


def explain(code: str, evidence: ProvenanceEvidence, dataset: str, trust_store: TrustStore) -> str:
    """One sentence saying why ``code`` failed for this batch and what to do about it."""
    facts, manifest = evidence.facts, evidence.manifest
    source = manifest.source_id if manifest else None
    key = manifest.key_id if manifest else None
    replay = evidence.replay
    messages = {
        "provenance:manifest_missing": lambda: f"no manifest at {evidence.manifest_path}; the source must sign "
        "the batch (`poisonguard sign`)",
        "provenance:manifest_malformed": lambda: evidence.manifest_error,
        "provenance:manifest_invalid": lambda: evidence.manifest_error,
        "provenance:unknown_source": lambda: f"source {source!r} is not in the trust store {trust_store.path}",
        "provenance:dataset_mismatch": lambda: f"the manifest is for dataset {manifest.dataset!r}, "
        f"not {dataset!r}",
        "provenance:dataset_not_allowed": lambda: f"source {source!r} is not allowed to deliver dataset "
        f"{dataset!r}",
        "provenance:unknown_key": lambda: f"key {key!r} is not a key of source {source!r} in the trust store",
        "provenance:key_revoked": lambda: f"key {key!r} of source {source!r} is revoked",
        "provenance:key_expired": lambda: f"key {key!r} of source {source!r} expired at "
        f"{trust_store.sources[source].keys[key].expires_at.isoformat()}",
        "provenance:signature_invalid": lambda: f"the signature does not verify with key {key!r}: the manifest "
        "was changed after signing or signed with another key",
        "provenance:sha256_mismatch": lambda: f"the file's sha256 {facts['sha256_read'][:16]}... is not the "
        f"signed {str(facts['sha256_signed'])[:16]}...: the file changed after signing, or the manifest "
        "belongs to another file",
        "provenance:row_count_mismatch": lambda: f"{facts['row_count_read']} rows read, "
        f"{facts['row_count_signed']} signed",
        "provenance:columns_mismatch": lambda: f"columns read {facts['columns_read']} differ from the signed "
        f"{facts['columns_signed']}",
        "provenance:created_in_future": lambda: f"the manifest was created at {manifest.created_at}, "
        f"{-facts['age_seconds']:.0f} s in the future; check the source's clock",
        "provenance:manifest_too_old": lambda: f"the manifest was created at {manifest.created_at}, "
        f"{facts['age_seconds'] / 3600:.1f} h ago, beyond the allowed age",
        "provenance:replay": lambda: f"the same {'file' if replay.match == 'file' else 'rows'} arrived as batch "
        f"{replay.first.batch_id} ({replay.first.source_path}) at {replay.first.recorded_at}",
    }
    return messages[code]()


def assess_provenance(
    batch: Batch,
    dataset: str,
    trust_store: TrustStore,
    ledger: Ledger | None,
    *,
    required: bool,
    max_age_seconds: float,
    clock_skew_seconds: float,
    now: datetime,
    validator: SchemaValidator,
    manifest_path: Path | None = None,
    rescan_of: str | None = None,
    rows: RowsRead | None = None,
) -> ProvenanceOutcome:
    """Gather the evidence for ``batch``, run the provenance suite on it and say what it decided.

    The outcome is ``failed`` when any expectation fails, ``unsigned`` when there is no manifest and none
    was required (the other checks then have nothing to check, but a replay still fails), else
    ``verified``. Each failure carries its reason code and a sentence naming the source and key.
    """
    evidence = gather_evidence(batch, dataset, trust_store, ledger, now, manifest_path, rescan_of, rows)
    suite = provenance_suite(
        list(trust_store.sources),
        require_manifest=required,
        max_age_seconds=max_age_seconds,
        clock_skew_seconds=clock_skew_seconds,
    )
    checks = run_provenance_suite(evidence.facts, suite, validator)
    failures = [
        {"code": c.reason, "message": explain(c.reason, evidence, dataset, trust_store)}
        for c in checks
        if not c.success
    ]
    if failures:
        status = FAILED
    elif evidence.manifest is None:
        status = UNSIGNED
    else:
        status = VERIFIED
    manifest = evidence.manifest
    replay = evidence.replay
    return ProvenanceOutcome(
        status=status,
        required=required,
        manifest_path=str(evidence.manifest_path),
        source_id=manifest.source_id if manifest else None,
        key_id=manifest.key_id if manifest else None,
        content_sha256=evidence.content_sha256,
        checks=[c.to_dict() for c in checks],
        failures=failures,
        replay_of={"match": replay.match, **replay.first.__dict__} if replay else None,
    )


def check_batch_provenance(batch: Batch, settings: ProvenanceSettings, now: datetime, rows: RowsRead, *,
                           ledger: Ledger, rescan: bool) -> ProvenanceOutcome:
    """:func:`assess_provenance` with a scan's provenance settings; ``rows``: what a pass over the batch's
    rows established; ``rescan``: earlier deliveries of this very batch do not count as replays (``--force``)."""
    return assess_provenance(
        batch,
        batch.dataset,
        load_trust_store(settings.trust_store),
        ledger,
        required=settings.require_provenance,
        max_age_seconds=settings.max_age_seconds,
        clock_skew_seconds=settings.clock_skew_seconds,
        now=now,
        validator=SchemaValidator(),
        rescan_of=batch.batch_id if rescan else None,
        rows=rows,
    )


def record_outcome(ledger: Ledger, batch: Batch, outcome: str, checked: ProvenanceOutcome | None,
                   rows_clean: int | None, rows_quarantined: int | None, content: str | None) -> None:
    """Append a scan's outcome for ``batch`` to the replay ledger (``content``: the rows' digest, when the
    scan established it; else from the provenance check or the batch's frame)."""
    if content is None and checked is not None:
        content = checked.content_sha256
    if content is None and batch.frame is not None:
        content = content_sha256(batch.frame)
    ledger.record(
        LedgerEntry(
            recorded_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            dataset=batch.dataset,
            batch_id=batch.batch_id,
            sha256=batch.sha256,
            content_sha256=content,
            source_id=checked.source_id if checked else None,
            key_id=checked.key_id if checked else None,
            source_path=str(batch.source_path),
            outcome=outcome,
            rows_in=batch.n_rows,
            rows_clean=rows_clean,
            rows_quarantined=rows_quarantined,
        )
    )
