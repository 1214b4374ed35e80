"""An inbox on object storage (any fsspec URL: ``s3://bucket/inbox``, ``gs://...``), each file taken by
exactly one run.

Object stores have no rename, so the local inbox's claim (one ``os.rename``, see
:mod:`poisonguard.ingest.inbox`) cannot carry over. A claim here is an object created with an exclusive
write: a conditional put (``If-None-Match: *``) on S3, which the store refuses when the object exists, so
of two runs creating the same claim exactly one succeeds. Layout under the inbox URL::

    <inbox>/<file>                                 waiting (with <file>.manifest.json beside it)
    <inbox>/processing/<file>.claim-<generation>   the claim: who took it and when
    <inbox>/processed/<file>                       scanned: clean or rows quarantined
    <inbox>/failed/<file>, <file>.reason.json      rejected whole, a replay, or an error

A claimed file stays where it was until it is filed; the run scans a local copy. A claim whose newest
generation is older than ``stale_after`` belongs to a run that died: another run takes it over by creating
the next generation, exclusively again, so one run wins that too. Filing copies the file to ``processed/``
or ``failed/``, then deletes it and its claims: a run that dies in between leaves it claimed, and the run
that takes it over scans the same bytes into the same outputs (they are keyed by content) and files it.

Written here rather than taken from a library: fsspec gives the exclusive create, and no library we know of
keeps a work queue of files on an object store.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from poisonguard.ingest.inbox import PROCESSED, PROCESSING, REASON_SUFFIX
from poisonguard.ingest.read import FORMATS_BY_SUFFIX, file_sha256, stream_sha256
from poisonguard.provenance.manifest import MANIFEST_SUFFIX

_CLAIM = re.compile(r"(?P<name>.+)\.claim-(?P<generation>\d{6})$")
_SEPARATOR = "--"


@dataclass(frozen=True)
class ObjectClaim:
    path: Path  # the local copy the run scans
    name: str  # the file's name in the inbox
    generation: int  # of the claim object this run created
    recovered: bool = False  # taken over from a run that died

    @property
    def manifest(self) -> Path:
        return self.path.with_name(self.path.name + MANIFEST_SUFFIX)


class ObjectInbox:
    """The inbox at ``url``; claimed files are copied into ``work_dir`` to be scanned."""

    def __init__(self, url: str, work_dir: Path, storage_options: dict[str, Any] | None = None) -> None:
        from fsspec.core import url_to_fs

        self.url = url.rstrip("/")
        self.fs, self.root = url_to_fs(self.url, **(storage_options or {}))
        self.root = self.root.rstrip("/")
        self.work_dir = Path(work_dir)
        self.token = secrets.token_hex(6)

    def __str__(self) -> str:
        return self.url

    def location(self, *parts: str) -> str:
        """The URL of ``parts`` under the inbox (what reports and reason files name)."""
        return "/".join([self.url, *parts])

    def _key(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def exists(self) -> bool:
        return self.fs.isdir(self.root)

    def waiting(self, min_age: float = 5.0, now: float | None = None) -> list[str]:
        """Names of batch files waiting directly in the inbox, old enough to take and not claimed, oldest
        first (manifests and hidden files skipped)."""
        now = time.time() if now is None else now
        claimed = set(self._claims())
        found = []
        for info in self.fs.ls(self.root, detail=True, refresh=True):
            name = info["name"].rstrip("/").rsplit("/", 1)[-1]
            if info["type"] != "file" or name.startswith(".") or name.endswith(MANIFEST_SUFFIX) or name in claimed:
                continue
            if Path(name).suffix.lower() not in FORMATS_BY_SUFFIX:
                continue
            modified = _modified(info)
            if now - modified >= min_age:
                found.append((modified, name))
        return [name for _, name in sorted(found)]

    def claim(self, name: str) -> ObjectClaim | None:
        """Take the waiting file ``name`` for this run; ``None`` if another run took it first."""
        return self._take(name, 1, recovered=False)

    def stale(self, stale_after: float, now: float | None = None) -> list[tuple[str, int]]:
        """(name, newest generation) of each claim older than ``stale_after`` seconds: its run died."""
        now = time.time() if now is None else now
        return sorted((name, generation) for name, (generation, modified) in self._claims().items()
                      if now - modified >= stale_after)

    def reclaim(self, stale: tuple[str, int]) -> ObjectClaim | None:
        """Take over a stale claim, (name, generation) from :meth:`stale`; ``None`` if another run did first."""
        name, generation = stale
        return self._take(name, generation + 1, recovered=True)

    def settle(self, claim: ObjectClaim, outcome: str, tag: str) -> str | None:
        """File the claimed file (and its manifest) under ``processed/`` or ``failed/``, never over a file
        there (a name already taken gets ``<tag>--`` in front); the URL it was filed at. ``None`` when
        another run took the claim over meanwhile and filed it."""
        if self._newest_generation(claim.name) != claim.generation:
            return None
        target = f"{outcome}/{claim.name}"
        if self.fs.exists(self._key(target)):
            target = f"{outcome}/{tag}{_SEPARATOR}{claim.name}"
        source = self._key(claim.name)
        try:
            self.fs.copy(source, self._key(target))
        except FileNotFoundError:
            return None
        if self.fs.exists(source + MANIFEST_SUFFIX):
            self.fs.copy(source + MANIFEST_SUFFIX, self._key(target + MANIFEST_SUFFIX))
            self.fs.rm_file(source + MANIFEST_SUFFIX)
        self.fs.rm_file(source)
        for generation in range(claim.generation, 0, -1):
            self._remove(self._claim_key(claim.name, generation))
        return self.location(target)

    def write_reason(self, filed: str, reason: dict[str, Any]) -> str:
        """Write ``<file>.reason.json`` beside the file filed at the URL ``filed``; its URL."""
        relative = filed[len(self.url) + 1:]
        self.fs.pipe_file(self._key(relative + REASON_SUFFIX),
                          json.dumps(reason, indent=2, sort_keys=True).encode("utf-8"))
        return filed + REASON_SUFFIX

    def filed_before(self, claim: ObjectClaim) -> bool:
        """Whether the same bytes as the claimed file are already filed as processed."""
        key = self._key(PROCESSED, claim.name)
        if not self.fs.exists(key):
            return False
        with self.fs.open(key, "rb") as filed:
            return stream_sha256(filed)[0] == file_sha256(claim.path)

    def relative(self, filed: str | None) -> str:
        return "(taken over by another run)" if filed is None else filed[len(self.url) + 1:]

    # ----------------------------------------------------------------------------------------------------

    def _take(self, name: str, generation: int, recovered: bool) -> ObjectClaim | None:
        key = self._claim_key(name, generation)
        claimed_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
        try:
            # The exclusive create: a conditional put on S3, O_EXCL on a local file system.
            self.fs.pipe_file(key, json.dumps({"run": self.token, "claimed_at": claimed_at}).encode(), mode="create")
        except FileExistsError:
            return None
        local = self.work_dir / f"{self.token}{_SEPARATOR}{name}"
        local.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.fs.get_file(self._key(name), str(local))
        except FileNotFoundError:  # filed by another run between our listing and our claim
            self._remove(key)
            return None
        if self.fs.exists(self._key(name + MANIFEST_SUFFIX)):
            self.fs.get_file(self._key(name + MANIFEST_SUFFIX), str(local) + MANIFEST_SUFFIX)
        return ObjectClaim(local, name, generation, recovered)

    def _claim_key(self, name: str, generation: int) -> str:
        return self._key(PROCESSING, f"{name}.claim-{generation:06d}")

    def _claims(self) -> dict[str, tuple[int, float]]:
        """Claimed file name -> (its newest claim generation, that claim's time)."""
        folder = self._key(PROCESSING)
        try:
            listed = self.fs.ls(folder, detail=True, refresh=True)
        except FileNotFoundError:
            return {}
        newest: dict[str, tuple[int, float]] = {}
        for info in listed:
            found = _CLAIM.match(info["name"].rsplit("/", 1)[-1])
            if found is None:
                continue
            generation = int(found["generation"])
            if generation > newest.get(found["name"], (0, 0.0))[0]:
                newest[found["name"]] = (generation, _modified(info))
        return newest

    def _newest_generation(self, name: str) -> int | None:
        return self._claims().get(name, (None, 0.0))[0]

    def _remove(self, key: str) -> None:
        try:
            self.fs.rm_file(key)
        except FileNotFoundError:
            pass


def _modified(info: dict[str, Any]) -> float:
    """An object's last-modified time in seconds since 1970, as its file system reports it."""
    for field in ("LastModified", "mtime", "updated", "last_modified"):
        value = info.get(field)
        if isinstance(value, datetime):
            return value.timestamp()
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    return time.time()  # unknown: taken as just written (a claim is then never taken for stale by mistake)
