"""Who may decide: the reviewers file, and Ed25519 signatures on audit entries.

The audit log's hash chain shows an edit, but anyone who can write ``review/audit.jsonl`` can append an
entry and recompute the chain: the red-team run forged a confirmation and a release that way, and
``review audit --verify`` called the log intact. With a reviewers file, every decision is signed with its
reviewer's private key and verification checks each signature against the public keys the file names, so
a forger also needs a reviewer's key. The file is trusted configuration, like the trust store, and belongs
outside the output directory::

    {"reviewers": {"alice": {"keys": {"alice-20261203-1a2b3c": {"public_key": "<base64 Ed25519 key>",
                                                               "revoked": false}}}}}

Keys are made and signed with the same Ed25519 tooling as batch manifests (``poisonguard.provenance.manifest``).
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from poisonguard.errors import ConfigError
from poisonguard.provenance.manifest import load_private_key, load_public_key
from poisonguard.write.atomic import atomic_write_json


@dataclass(frozen=True)
class ReviewerKey:
    reviewer: str
    key_id: str
    public_key: Ed25519PublicKey
    revoked: bool = False


@dataclass(frozen=True)
class Signer:
    """The reviewer deciding now, with the private key their entries are signed with."""

    reviewer: str
    key_id: str
    private_key: Ed25519PrivateKey

    def sign(self, entry_hash: str) -> str:
        return base64.b64encode(self.private_key.sign(entry_hash.encode("ascii"))).decode("ascii")


def load_reviewers(path: Path) -> dict[str, ReviewerKey]:
    """Key id -> :class:`ReviewerKey` from the reviewers file; :class:`ConfigError` naming file and field."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: reviewers file not found") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot read the reviewers file: {exc}") from None
    keys: dict[str, ReviewerKey] = {}
    reviewers = data.get("reviewers") if isinstance(data, dict) else None
    if not isinstance(reviewers, dict):
        raise ConfigError(f"{path}: expected an object with a 'reviewers' object")
    for reviewer, entry in reviewers.items():
        for key_id, key in ((entry or {}).get("keys") or {}).items():
            try:
                public_key = load_public_key(key["public_key"])
            except (KeyError, TypeError, ValueError):
                raise ConfigError(
                    f"{path}: reviewers.{reviewer}.keys.{key_id}.public_key is not an Ed25519 key"
                ) from None
            if key_id in keys:
                raise ConfigError(f"{path}: key id {key_id!r} belongs to two reviewers")
            keys[key_id] = ReviewerKey(reviewer, key_id, public_key, bool(key.get("revoked", False)))
    return keys


def add_reviewer_key(path: Path, reviewer: str, key_id: str, public_key: str) -> None:
    """Add ``reviewer``'s public key to the reviewers file at ``path`` (created if absent)."""
    path = Path(path)
    data: dict[str, Any] = {"reviewers": {}}
    if path.exists():
        load_reviewers(path)  # refuse to extend a broken file
        data = json.loads(path.read_text(encoding="utf-8"))
    keys = data["reviewers"].setdefault(reviewer, {}).setdefault("keys", {})
    keys[key_id] = {"public_key": public_key, "revoked": False}
    atomic_write_json(path, data)


def signer_for(key_path: Path, reviewers: dict[str, ReviewerKey], reviewers_path: Path) -> Signer:
    """The :class:`Signer` whose private key is at ``key_path``, named by ``reviewers`` (read from
    ``reviewers_path``); refuses a key the file does not name or has revoked."""
    private_key = load_private_key(key_path)
    public = private_key.public_key().public_bytes_raw()
    for key in reviewers.values():
        if key.public_key.public_bytes_raw() == public:
            if key.revoked:
                raise ConfigError(f"{key_path}: key {key.key_id} of {key.reviewer} is revoked in {reviewers_path}")
            return Signer(key.reviewer, key.key_id, private_key)
    raise ConfigError(f"{key_path}: this key belongs to no reviewer in {reviewers_path}; add it first")


def signature_problem(entry: dict[str, Any], reviewers: dict[str, ReviewerKey]) -> str | None:
    """Why ``entry`` is not validly signed by a reviewer of ``reviewers``, or ``None``."""
    key = reviewers.get(str(entry.get("key_id")))
    if entry.get("signature") is None or key is None:
        return "it is not signed by a key of the reviewers file"
    if key.reviewer != entry.get("reviewer"):
        return f"it names reviewer {entry.get('reviewer')!r} but is signed with {key.reviewer}'s key"
    if key.revoked:
        return f"it is signed with key {key.key_id}, which is revoked"
    try:
        key.public_key.verify(base64.b64decode(str(entry["signature"])), str(entry.get("hash")).encode("ascii"))
    except (InvalidSignature, ValueError):
        return "its signature does not match its content"
    return None
