"""The review audit log: every decision on quarantined rows, append-only and hash-chained.

A row's review status is derived from this log alone, so it is the one record of every decision:

    review/audit.jsonl   one JSON object a line: seq, at, reviewer, action, dataset, batch_id, row_ids,
                         reason, output, prev_hash, hash (sha256 of the canonical JSON of the rest)

Each entry's ``prev_hash`` is the previous entry's ``hash``, so editing or deleting an entry breaks the
chain at that point. Every decision runs under one file lock (``review/audit.lock``): two reviewers
can never both release the same row or interleave their entries.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from poisonguard.errors import InputError
from poisonguard.review.reviewers import ReviewerKey, Signer, signature_problem

RELEASE = "release"
CONFIRM = "confirm"
UNDO = "undo"  # takes earlier decisions of rows back: the rows are pending again (nothing is rewritten)
GENESIS = "0" * 64
DONE = {RELEASE: "released", CONFIRM: "confirmed as poison", UNDO: "taken back to pending"}  # what a decision did


class ReviewError(InputError):
    """A review decision that cannot be made as asked (unknown row, already decided, tampered log)."""


@dataclass(frozen=True)
class AuditCheck:
    entries: int
    head: str
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


class AuditLog:
    """The append-only, hash-chained log of review decisions under ``<out>/review/``."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / "review" / "audit.jsonl"
        self.lock_path = self.out_dir / "review" / "audit.lock"

    @contextmanager
    def locked(self, timeout: float = 60.0) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with FileLock(self.lock_path, timeout=timeout):
                yield
        except Timeout:
            raise ReviewError(
                f"{self.lock_path}: another review has held the lock for {timeout:.0f} s; try again"
            ) from None

    def entries(self) -> list[dict[str, Any]]:
        """Every entry, in order; raises :class:`ReviewError` on a line that is not JSON."""
        if not self.path.exists():
            return []
        entries = []
        for number, line in enumerate(self.path.read_text(encoding="utf-8").splitlines(), start=1):
            try:
                entries.append(json.loads(line))
            except ValueError:
                raise ReviewError(f"{self.path}: line {number} is not valid JSON (edited or cut short)") from None
        return entries

    def verify(self, reviewers: dict[str, ReviewerKey] | None = None) -> AuditCheck:
        """Recompute the chain and check each release's file and, given ``reviewers`` (see
        :mod:`poisonguard.review.reviewers`), each entry's signature; report every problem found."""
        try:
            entries = self.entries()
        except ReviewError as exc:
            return AuditCheck(0, GENESIS, [str(exc)])
        problems, previous = [], GENESIS
        withdrawn = {name: entry for entry in entries if entry.get("action") == UNDO
                     for name in entry.get("withdrawn") or []}
        for position, entry in enumerate(entries, start=1):
            where = f"entry {position} (seq {entry.get('seq')})"
            if entry.get("seq") != position:
                problems.append(f"{where}: expected seq {position}; an entry was deleted or reordered")
            if entry.get("prev_hash") != previous:
                problems.append(f"{where}: prev_hash does not match the entry before; the chain is broken")
            if entry.get("hash") != entry_hash(entry):
                problems.append(f"{where}: its hash does not match its content; the entry was edited")
            if reviewers is not None and (problem := signature_problem(entry, reviewers)) is not None:
                problems.append(f"{where}: {problem}")
            previous = entry.get("hash", "")
            if entry.get("output"):
                problems += self._check_released_file(str(entry["output"]), withdrawn.get(str(entry["output"])), where)
        problems += self._orphan_release_files(entries)
        problems += self._check_mirrored_head(entries)
        return AuditCheck(len(entries), previous, problems)

    def _check_mirrored_head(self, entries: list[dict[str, Any]]) -> list[str]:
        """The ledger's copy of the head must be an entry of the log, with the same hash: a log cut short or
        rewritten from some entry on no longer holds it. The copy is written just after its entry, so it may
        lag the log by the entry a crash interrupted, never lead it."""
        head = self.mirrored_head()
        if head is None:
            return []
        seq, mirrored = head
        if seq > len(entries):
            return [f"{self.ledger_path}: the ledger's copy of the audit head is entry {seq}, but the log ends at "
                    f"entry {len(entries)}; entries were cut from its end"]
        if entries[seq - 1].get("hash") != mirrored:
            return [f"entry {seq}: its hash is not the one the ledger mirrored; the log was rewritten from there"]
        return []

    @property
    def ledger_path(self) -> Path:
        """Where the head is mirrored: the output area's ledger, the replay ledger's default place. When
        ``provenance.ledger`` puts the replay ledger elsewhere, this file holds the mirror alone: review
        commands read no scan configuration, and a pointer to the ledger kept in the output area would let
        whoever rewrites the log point verification at an empty ledger."""
        return self.out_dir / "ledger.sqlite"

    def mirrored_head(self) -> tuple[int, str] | None:
        if not self.ledger_path.exists():
            return None
        from poisonguard.provenance.ledger import Ledger

        return Ledger(self.ledger_path).audit_head()

    def _check_released_file(self, name: str, undo: dict[str, Any] | None, where: str) -> list[str]:
        """A release's (or an undo's) file is in the clean area, or, once a later undo withdrew it, kept
        under ``review/withdrawn/`` and gone from the clean area."""
        target = self.out_dir / name
        if undo is None:
            return [] if target.exists() else [f"{where}: released file {target} is missing"]
        problems = []
        if target.exists():
            problems.append(f"{where}: {target} was withdrawn by undo seq {undo.get('seq')} but is still in the "
                            "clean area (an interrupted undo; the next decision finishes it)")
        kept = withdrawn_path(self.out_dir, name)
        if not kept.exists() and not target.exists():
            problems.append(f"{where}: withdrawn file {name} is missing from review/withdrawn/")
        return problems

    def _orphan_release_files(self, entries: list[dict[str, Any]]) -> list[str]:
        from poisonguard.write.outputs import released_glob

        logged = {str(e.get("output")) for e in entries if e.get("output")}
        problems = []
        for path in sorted((self.out_dir / "clean").glob(f"*/{released_glob()}")):
            if str(path.relative_to(self.out_dir)) not in logged:
                problems.append(f"{path}: a released file with no audit entry; its rows are not released")
        return problems

    def append(self, fields: dict[str, Any], signer: Signer | None = None) -> dict[str, Any]:
        """Chain ``fields`` onto the log, signed by ``signer`` when given, and write the entry durably. Call
        under :meth:`locked`."""
        entries = self.entries()
        entry = {
            "seq": len(entries) + 1,
            **fields,
            "prev_hash": entries[-1]["hash"] if entries else GENESIS,
        }
        if signer is not None:
            entry |= {"reviewer": signer.reviewer, "key_id": signer.key_id}
        entry["hash"] = entry_hash(entry)
        if signer is not None:
            entry["signature"] = signer.sign(entry["hash"])
        line = json.dumps(entry, sort_keys=True, ensure_ascii=False) + "\n"
        descriptor = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(descriptor, line.encode("utf-8"))
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        self._mirror_head(entry)
        return entry

    def _mirror_head(self, entry: dict[str, Any]) -> None:
        """Copy the new head into the ledger. The entry is durable already (and a release's file is renamed
        into place after this returns), so a ledger that cannot be written is a warning, never a failed
        decision: verification accepts a copy that lags the log."""
        import logging
        import sqlite3

        from poisonguard.errors import ConfigError
        from poisonguard.provenance.ledger import Ledger

        try:
            Ledger(self.ledger_path).record_audit_head(entry["seq"], entry["hash"])
        except (ConfigError, OSError, sqlite3.Error) as error:
            logging.getLogger(__name__).warning("audit entry %s is written, but %s could not mirror it: %s",
                                                entry["seq"], self.ledger_path, error)


def withdrawn_path(out_dir: Path, name: str) -> Path:
    """Where an undo keeps a released file (``name``, relative to ``out_dir``) it took out of the clean area:
    kept for the audit, never trained on."""
    return Path(out_dir) / "review" / "withdrawn" / Path(name).relative_to("clean")


def entry_hash(entry: dict[str, Any]) -> str:
    """sha256 of the entry's canonical JSON without its hash and signature (the signature signs the hash)."""
    content = {k: v for k, v in entry.items() if k not in ("hash", "signature")}
    return hashlib.sha256(json.dumps(content, sort_keys=True, separators=(",", ":")).encode("utf-8")).hexdigest()
