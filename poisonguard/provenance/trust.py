"""The trust store: which sources may deliver batches, with which keys, for which datasets.

A JSON file::

    {"sources": {"bank-a": {"datasets": ["loans"],            # optional; absent means any dataset
                            "keys": {"bank-a-20261123-3f2a01": {
                                "public_key": "<base64 of the 32-byte Ed25519 key>",
                                "expires_at": "2027-11-23T00:00:00Z",   # optional
                                "revoked": false}}}}}                  # optional, default false

It is read whole and checked before any batch is looked at; a store that is missing or wrong is a
configuration error (exit 2), never a reason to let a batch through.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from poisonguard.errors import ConfigError
from poisonguard.provenance.manifest import load_public_key, parse_utc
from poisonguard.write.atomic import atomic_write_json


@dataclass(frozen=True)
class TrustedKey:
    key_id: str
    public_key: Ed25519PublicKey
    public_key_text: str
    expires_at: datetime | None = None
    revoked: bool = False

    def expired(self, now: datetime) -> bool:
        return self.expires_at is not None and self.expires_at <= now


@dataclass(frozen=True)
class TrustedSource:
    source_id: str
    keys: dict[str, TrustedKey]
    datasets: frozenset[str] | None = None  # None: any dataset

    def allows(self, dataset: str) -> bool:
        return self.datasets is None or dataset in self.datasets


@dataclass(frozen=True)
class TrustStore:
    path: Path
    sources: dict[str, TrustedSource] = field(default_factory=dict)


def load_trust_store(path: Path) -> TrustStore:
    """Read and check the trust store at ``path``; raise :class:`ConfigError` naming the file and field."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: trust store not found; create one with `poisonguard keys generate "
                          f"--trust-store {path}` or check --trust-store") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the trust store: {exc}") from None
    except ValueError as exc:
        raise ConfigError(f"{path}: the trust store is not valid JSON: {exc}") from None
    sources = _mapping(data, "sources", path, "the top level") if isinstance(data, dict) else None
    if sources is None:
        raise ConfigError(f"{path}: the trust store must be a JSON object with a 'sources' object")
    return TrustStore(path, {sid: _source(sid, entry, path) for sid, entry in sources.items()})


def _mapping(data: dict[str, Any], key: str, path: Path, where: str) -> dict[str, Any]:
    value = data.get(key)
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: {where} needs a {key!r} object")
    return value


def _source(source_id: str, entry: Any, path: Path) -> TrustedSource:
    where = f"source {source_id!r}"
    if not isinstance(entry, dict):
        raise ConfigError(f"{path}: {where} must be an object")
    datasets = entry.get("datasets")
    if datasets is not None and not (isinstance(datasets, list) and all(isinstance(d, str) for d in datasets)):
        raise ConfigError(f"{path}: {where}: 'datasets' must be a list of dataset names")
    keys = {kid: _key(kid, key, path, where) for kid, key in _mapping(entry, "keys", path, where).items()}
    return TrustedSource(source_id, keys, frozenset(datasets) if datasets is not None else None)


def _key(key_id: str, entry: Any, path: Path, where: str) -> TrustedKey:
    where = f"{where}, key {key_id!r}"
    if not isinstance(entry, dict) or not isinstance(entry.get("public_key"), str):
        raise ConfigError(f"{path}: {where} needs a 'public_key' string")
    try:
        public_key = load_public_key(entry["public_key"])
    except ValueError:
        raise ConfigError(f"{path}: {where}: 'public_key' is not a base64 32-byte Ed25519 key") from None
    expires_at = entry.get("expires_at")
    if expires_at is not None:
        try:
            expires_at = parse_utc(expires_at)
        except (TypeError, AttributeError, ValueError):
            raise ConfigError(f"{path}: {where}: 'expires_at' must be an ISO 8601 UTC time") from None
    revoked = entry.get("revoked", False)
    if not isinstance(revoked, bool):
        raise ConfigError(f"{path}: {where}: 'revoked' must be true or false")
    return TrustedKey(key_id, public_key, entry["public_key"], expires_at, revoked)


def add_key(
    path: Path,
    source_id: str,
    key_id: str,
    public_key: str,
    *,
    datasets: list[str] | None = None,
    expires_at: datetime | None = None,
) -> Path:
    """Add a public key for ``source_id`` to the trust store at ``path`` (created if absent), atomically.

    ``datasets``, when given, replaces the source's allowed datasets. The existing file is checked first,
    so a broken store is reported rather than overwritten.
    """
    path = Path(path)
    data: dict[str, Any] = {"sources": {}}
    if path.exists():
        load_trust_store(path)
        data = json.loads(path.read_text(encoding="utf-8"))
    source = data["sources"].setdefault(source_id, {"keys": {}})
    if key_id in source["keys"]:
        raise ConfigError(f"{path}: source {source_id!r} already has a key {key_id!r}")
    entry: dict[str, Any] = {"public_key": public_key, "revoked": False}
    if expires_at is not None:
        entry["expires_at"] = expires_at.isoformat(timespec="seconds").replace("+00:00", "Z")
    source["keys"][key_id] = entry
    if datasets:
        source["datasets"] = sorted(set(datasets))
    return atomic_write_json(path, data)
