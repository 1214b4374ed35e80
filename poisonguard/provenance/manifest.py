"""Signed batch manifests: what a source vouches for, and Ed25519 signing over a canonical encoding.

A manifest is a JSON sidecar ``<batch file>.manifest.json``. Its signature covers every other field,
encoded canonically (sorted keys, no insignificant whitespace, UTF-8), so re-indenting the file does
not break it but changing any value does. All cryptography is the ``cryptography`` package's Ed25519.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import secrets
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from poisonguard import __version__
from poisonguard.names import dataset_name_problem

if TYPE_CHECKING:
    from poisonguard.config import ScanConfig
from poisonguard.errors import ConfigError, InputError
from poisonguard.write.atomic import atomic_write_text

MANIFEST_SUFFIX = ".manifest.json"
MANIFEST_VERSION = 1
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
# Field name -> the JSON type it must have; every field is required.
_FIELD_TYPES: dict[str, type | tuple[type, ...]] = {
    "manifest_version": int,
    "dataset": str,
    "source_id": str,
    "file_name": str,
    "sha256": str,
    "size_bytes": int,
    "row_count": int,
    "columns": list,
    "created_at": str,
    "producer": dict,
    "key_id": str,
    "signature": str,
}


class ManifestError(Exception):
    """A manifest that cannot be used; ``code`` is the provenance reason code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Manifest:
    manifest_version: int
    dataset: str
    source_id: str
    file_name: str
    sha256: str
    size_bytes: int
    row_count: int
    columns: list[str]
    created_at: str  # ISO 8601, UTC
    producer: dict[str, str]
    key_id: str
    signature: str  # base64 of the 64-byte Ed25519 signature over signed_bytes()

    def signed_bytes(self) -> bytes:
        """The canonical encoding of every field but the signature: what the signature covers."""
        fields = asdict(self)
        fields.pop("signature")
        return canonical_json(fields)

    def created_at_time(self) -> datetime:
        return parse_utc(self.created_at)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def canonical_json(data: Any) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def parse_utc(text: str) -> datetime:
    """Parse an ISO 8601 time that carries a UTC offset; naive times are refused, not guessed."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError(f"time {text!r} has no UTC offset")
    return moment.astimezone(timezone.utc)


def manifest_path_for(batch_path: Path) -> Path:
    return Path(batch_path).with_name(Path(batch_path).name + MANIFEST_SUFFIX)


def declared_dataset(path: Path) -> str | None:
    """The dataset named by the manifest at ``path``; ``None`` when there is no readable manifest or its
    dataset is no safe folder name. Unverified: the provenance checks later verify the signature over it
    and whether its source may deliver that dataset."""
    try:
        dataset = read_manifest(path).dataset
    except ManifestError:
        return None
    return dataset if dataset_name_problem(dataset) is None else None


def scan_dataset(path: Path, config: ScanConfig, file_name: str | None = None) -> str:
    """The dataset the batch at ``path`` is scanned as: ``config.io.dataset``; else, when manifests are checked
    (a trust store is configured), the dataset its manifest names, as the source signed it; else the file
    name (``file_name`` when ``path`` is a claimed copy) without its suffixes."""
    from poisonguard.ingest.read import dataset_name_from_path

    if config.io.dataset:
        return config.io.dataset
    declared = declared_dataset(manifest_path_for(path)) if config.provenance.trust_store is not None else None
    return declared or dataset_name_from_path(Path(file_name or path))


def read_manifest(path: Path) -> Manifest:
    """Parse and type-check the manifest at ``path``.

    Raises :class:`ManifestError` with code ``provenance:manifest_missing``,
    ``provenance:manifest_malformed`` (not JSON) or ``provenance:manifest_invalid`` (fields missing or of
    the wrong type, naming them).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ManifestError("provenance:manifest_missing", f"{path}: no manifest") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError("provenance:manifest_malformed", f"{path}: cannot read manifest: {exc}") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ManifestError("provenance:manifest_malformed", f"{path}: not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ManifestError("provenance:manifest_malformed", f"{path}: a manifest must be a JSON object")
    problems = _field_problems(data)
    if problems:
        raise ManifestError("provenance:manifest_invalid", f"{path}: {'; '.join(problems)}")
    return Manifest(**{name: data[name] for name in _FIELD_TYPES})


def _field_problems(data: dict[str, Any]) -> list[str]:
    problems = []
    for name, expected in _FIELD_TYPES.items():
        if name not in data:
            problems.append(f"field {name!r} is missing")
        elif isinstance(data[name], bool) or not isinstance(data[name], expected):
            problems.append(f"field {name!r} should be {expected.__name__}, not {type(data[name]).__name__}")
    unknown = sorted(set(data) - set(_FIELD_TYPES))
    if unknown:
        problems.append(f"unknown field(s) {', '.join(map(repr, unknown))}")
    if problems:
        return problems
    if data["manifest_version"] != MANIFEST_VERSION:
        problems.append(f"manifest_version {data['manifest_version']} is not supported (expected 1)")
    if not _SHA256.match(data["sha256"]):
        problems.append("field 'sha256' should be 64 lowercase hex digits")
    if data["row_count"] < 0 or data["size_bytes"] < 0:
        problems.append("row_count and size_bytes must not be negative")
    if not all(isinstance(c, str) for c in data["columns"]):
        problems.append("field 'columns' should be a list of strings")
    try:
        parse_utc(data["created_at"])
    except ValueError as exc:
        problems.append(f"field 'created_at' is not an ISO 8601 UTC time: {exc}")
    return problems


def sign_manifest(fields: dict[str, Any], private_key: Ed25519PrivateKey) -> Manifest:
    """Return a :class:`Manifest` of ``fields`` (all but ``signature``) signed with ``private_key``."""
    unsigned = Manifest(**fields, signature="")
    signature = private_key.sign(unsigned.signed_bytes())
    return Manifest(**fields, signature=base64.b64encode(signature).decode("ascii"))


def signature_is_valid(manifest: Manifest, public_key: Ed25519PublicKey) -> bool:
    try:
        signature = base64.b64decode(manifest.signature, validate=True)
        public_key.verify(signature, manifest.signed_bytes())
    except (InvalidSignature, binascii.Error, ValueError):
        return False
    return True


def manifest_fields(
    *, dataset: str, source_id: str, key_id: str, file_name: str, sha256: str, size_bytes: int,
    row_count: int, columns: list[str], created_at: datetime | None = None,
) -> dict[str, Any]:
    """The fields a signer fills in for one batch file."""
    moment = (created_at or datetime.now(timezone.utc)).astimezone(timezone.utc)
    return {
        "manifest_version": MANIFEST_VERSION,
        "dataset": dataset,
        "source_id": source_id,
        "file_name": file_name,
        "sha256": sha256,
        "size_bytes": size_bytes,
        "row_count": row_count,
        "columns": list(columns),
        "created_at": moment.isoformat(timespec="seconds").replace("+00:00", "Z"),
        "producer": {"tool": "poisonguard", "version": __version__},
        "key_id": key_id,
    }


def write_manifest(manifest: Manifest, path: Path) -> Path:
    return atomic_write_text(path, manifest.to_json())


# --- keys -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GeneratedKey:
    key_id: str
    private_key_path: Path
    public_key: str  # base64 of the 32 raw bytes, as the trust store records it


def new_key_id(source_id: str, now: datetime | None = None) -> str:
    day = (now or datetime.now(timezone.utc)).strftime("%Y%m%d")
    return f"{source_id}-{day}-{secrets.token_hex(3)}"


def generate_key(key_dir: Path, key_id: str) -> GeneratedKey:
    """Create an Ed25519 key pair; write the private key as ``<key_dir>/<key_id>.pem`` with mode 0600.

    The file is created exclusively with its final permissions, so no other user can read it even for a
    moment, and an existing key is never overwritten (:class:`InputError`).
    """
    key_dir = Path(key_dir)
    key_dir.mkdir(parents=True, exist_ok=True)
    target = key_dir / f"{key_id}.pem"
    private_key = Ed25519PrivateKey.generate()
    pem = private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    try:
        descriptor = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise InputError(f"{target}: a key file already exists; choose another --key-id") from None
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(pem)
        handle.flush()
        os.fsync(handle.fileno())
    return GeneratedKey(key_id, target, public_key_text(private_key.public_key()))


def public_key_text(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode("ascii")


def load_public_key(text: str) -> Ed25519PublicKey:
    """The key from its base64 raw form; raises ``ValueError`` when it is not a 32-byte Ed25519 key."""
    raw = base64.b64decode(text, validate=True)
    return Ed25519PublicKey.from_public_bytes(raw)


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """Read an unencrypted PKCS8 PEM Ed25519 private key; errors name the file, never its contents."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{path}: private key not found; check --key") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read the private key: {exc.strerror}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise ConfigError(f"{path}: not an unencrypted PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path}: not an Ed25519 key (poisonguard signs with Ed25519 only)")
    return key
