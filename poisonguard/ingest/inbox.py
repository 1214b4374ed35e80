"""An inbox folder of batch files, each taken by exactly one run: claim, recover, settle.

Layout under the inbox directory::

    <inbox>/<file>                          waiting (with <file>.manifest.json beside it)
    <inbox>/processing/<token>--<file>      claimed by one run; the token is unique per claim
    <inbox>/processed/<file>                scanned: clean or rows quarantined
    <inbox>/failed/<file>                   rejected whole, a replay, or an error

A claim is one ``os.rename`` of the file to a name no other run can choose: of two runs renaming the same
file, exactly one succeeds and the other sees it gone. The claim's time is the file's mtime, set at
claim; a claim older than ``stale_after`` belongs to a run that died, and is claimed again the same way.
Files younger than ``min_age`` are left for the next run, so a file still being copied in is not taken
(writers should still write to a temporary name and rename, as ``poisonguard sign`` does).
"""

from __future__ import annotations

import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from poisonguard.ingest.read import FORMATS_BY_SUFFIX
from poisonguard.provenance.manifest import MANIFEST_SUFFIX

PROCESSING, PROCESSED, FAILED = "processing", "processed", "failed"
_SEPARATOR = "--"


@dataclass(frozen=True)
class Claim:
    path: Path  # the claimed file under processing/
    name: str  # its name in the inbox
    recovered: bool = False  # taken over from a run that died

    @property
    def manifest(self) -> Path:
        return self.path.with_name(self.path.name + MANIFEST_SUFFIX)


def waiting_files(inbox: Path, min_age: float = 5.0, now: float | None = None) -> list[Path]:
    """Batch files directly in ``inbox`` old enough to take, oldest first (manifests and hidden files skipped)."""
    now = time.time() if now is None else now
    found = []
    for path in Path(inbox).iterdir():
        name = path.name
        if name.startswith(".") or name.endswith(MANIFEST_SUFFIX) or not path.is_file():
            continue
        if path.suffix.lower() not in FORMATS_BY_SUFFIX:
            continue
        try:
            modified = path.stat().st_mtime
        except FileNotFoundError:  # taken by another run meanwhile
            continue
        if now - modified >= min_age:
            found.append((modified, path))
    return [path for _, path in sorted(found)]


def claim(path: Path) -> Claim | None:
    """Take the waiting file ``path`` for this run; ``None`` if another run took it first."""
    path = Path(path)
    processing = path.parent / PROCESSING
    processing.mkdir(exist_ok=True)
    target = processing / f"{secrets.token_hex(6)}{_SEPARATOR}{path.name}"
    if not _take(path, target):
        return None
    _take(path.with_name(path.name + MANIFEST_SUFFIX), target.with_name(target.name + MANIFEST_SUFFIX))
    return Claim(target, path.name)


def stale_claims(inbox: Path, stale_after: float, now: float | None = None) -> list[Path]:
    """Claimed files whose claim is older than ``stale_after`` seconds: their run died."""
    now = time.time() if now is None else now
    processing = Path(inbox) / PROCESSING
    if not processing.is_dir():
        return []
    stale = []
    for path in processing.iterdir():
        if path.name.endswith(MANIFEST_SUFFIX) or _SEPARATOR not in path.name:
            continue
        try:
            if now - path.stat().st_mtime >= stale_after:
                stale.append(path)
        except FileNotFoundError:
            continue
    return sorted(stale)


def reclaim(path: Path) -> Claim | None:
    """Take over the stale claim ``path``; ``None`` if another run took it over first."""
    path = Path(path)
    name = path.name.split(_SEPARATOR, 1)[1]
    target = path.with_name(f"{secrets.token_hex(6)}{_SEPARATOR}{name}")
    if not _take(path, target):
        return None
    _take(path.with_name(path.name + MANIFEST_SUFFIX), target.with_name(target.name + MANIFEST_SUFFIX))
    return Claim(target, name, recovered=True)


def settle(claim: Claim, outcome: str, tag: str) -> Path:
    """Move the claimed file (and its manifest) to ``processed/`` or ``failed/``; never overwrite a file there.

    A name already taken there (the same file name delivered another day) gets ``<tag>--`` in front.
    """
    folder = claim.path.parent.parent / outcome
    folder.mkdir(exist_ok=True)
    target = folder / claim.name
    if target.exists():
        target = folder / f"{tag}{_SEPARATOR}{claim.name}"
    os.replace(claim.path, target)
    if claim.manifest.exists():
        os.replace(claim.manifest, target.with_name(target.name + MANIFEST_SUFFIX))
    return target


REASON_SUFFIX = ".reason.json"


def write_reason(filed: Path, reason: dict) -> Path:
    """Write why a batch was filed as failed beside it, ``<file>.reason.json`` (atomically); return its path."""
    from poisonguard.write.atomic import atomic_write_json

    return atomic_write_json(filed.with_name(filed.name + REASON_SUFFIX), reason)


class FolderInbox:
    """The inbox folder ``root`` behind the interface the inbox flow uses for any inbox (see
    :class:`poisonguard.ingest.object_inbox.ObjectInbox` for one on object storage)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def __str__(self) -> str:
        return str(self.root)

    def exists(self) -> bool:
        return self.root.is_dir()

    def waiting(self, min_age: float) -> list[Path]:
        return waiting_files(self.root, min_age)

    def claim(self, path: Path) -> Claim | None:
        return claim(path)

    def stale(self, stale_after: float) -> list[Path]:
        return stale_claims(self.root, stale_after)

    def reclaim(self, path: Path) -> Claim | None:
        return reclaim(path)

    def settle(self, taken: Claim, outcome: str, tag: str) -> str | None:
        """The filed file's absolute path; ``None`` when another run took the claim over meanwhile."""
        try:
            return str(settle(taken, outcome, tag).resolve())
        except FileNotFoundError:
            return None

    def write_reason(self, filed: str, reason: dict) -> str:
        return str(write_reason(Path(filed), reason))

    def filed_before(self, taken: Claim) -> bool:
        """Whether the same bytes as the claimed file are already filed as processed."""
        from poisonguard.ingest.read import file_sha256

        filed = self.root / PROCESSED / taken.name
        return filed.exists() and file_sha256(filed) == file_sha256(taken.path)

    def relative(self, filed: str | None) -> str:
        return "(taken over by another run)" if filed is None else str(Path(filed).relative_to(self.root.resolve()))


def _take(source: Path, target: Path) -> bool:
    try:
        os.rename(source, target)
    except FileNotFoundError:
        return False
    os.utime(target)  # the claim's time, for stale-claim recovery
    return True
