"""Inputs on object storage, copied to local disk before a scan reads them.

A batch, a reference, a suite or a trust store may be given as an fsspec URL (``s3://bucket/key``,
``gs://...``). The scan copies each into its private snapshot folder first and reads the copy: every later
pass (hashing, chunked reads, the manifest check) then reads bytes that cannot change under it, as with a
local batch (see :func:`poisonguard.ingest.read.describe_batch`), and nothing else in the scan needs to know
where an input came from. A batch's manifest, ``<url>.manifest.json``, comes with it when there is one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from poisonguard.errors import InputError
from poisonguard.names import is_url
from poisonguard.provenance.manifest import MANIFEST_SUFFIX

# The settings that name inputs a scan only reads (config field -> the words an error uses).
INPUTS = {"reference": "reference", "suite": "suite", "trust_store": "trust store"}


def fetched(location: str | Path, folder: Path, what: str = "batch file", with_manifest: bool = False) -> Path:
    """A local path for ``location``: itself when it is local, else a copy of the object in its own folder
    under ``folder`` (named as the object is), with its manifest beside it when asked and there is one.
    :class:`InputError` naming the URL when there is no such object or it cannot be read."""
    if not is_url(location):
        return Path(str(location).removeprefix("file://"))
    from fsspec.core import url_to_fs

    url = str(location)
    try:
        fs, key = url_to_fs(url)
        target = Path(folder) / "fetched" / what.replace(" ", "-")  # one folder per input: names may repeat
        target.mkdir(parents=True, exist_ok=True)
        local = target / key.rstrip("/").rsplit("/", 1)[-1]
        fs.get_file(key, str(local))
        if with_manifest and fs.exists(key + MANIFEST_SUFFIX):
            fs.get_file(key + MANIFEST_SUFFIX, str(local) + MANIFEST_SUFFIX)
    except FileNotFoundError:
        raise InputError(f"{url}: {what} not found") from None
    except (OSError, ValueError, ImportError) as error:
        raise InputError(f"{url}: cannot read the {what}: {error}") from None
    return local


def localized(config: Any, folder: Path) -> Any:
    """``config`` with each input given as a URL (reference, suite, trust store) replaced by a local copy in
    ``folder``; ``config`` itself when none is."""
    settings = {"reference": config.io.reference, "suite": config.expectations.suite,
                "trust_store": config.provenance.trust_store}
    copies = {name: fetched(value, folder, INPUTS[name]) for name, value in settings.items()
              if value is not None and is_url(value)}
    return config.with_overrides(**copies) if copies else config
