"""Settings from text: a ``[scan]`` table of a TOML file, or a deployment's JSON parameters.

Paths are resolved against the file's own folder, detector lists parsed (names, or tables with a ``name``
and the detector's parameters), and group tables (``[scan.calibration]``) merged with flat keys; the
result is a :class:`~poisonguard.config.ScanConfig`, so every value is then type-checked.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from poisonguard.config import GROUP_OF, GROUPS, ScanConfig, unknown_keys
from poisonguard.errors import ConfigError
from poisonguard.names import is_url

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on Python 3.10
    import tomli as tomllib

_PATH_FIELDS = {"out_dir", "reference", "suite", "suite_dir", "trust_store", "ledger"}


def load_config(path: Path) -> ScanConfig:
    """Read a ``[scan]`` table (flat keys, or group tables such as ``[scan.calibration]``) from a TOML file
    into a :class:`ScanConfig`.

    Relative paths inside the file are taken relative to the file's own directory.
    Raises :class:`ConfigError` naming the file and the offending key.
    """
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config: {exc}") from None
    table = data.get("scan", {})
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: [scan] must be a table")
    unknown = unknown_keys(sorted(set(table) - set(ScanConfig.model_fields) - set(GROUP_OF)),
                           [*ScanConfig.model_fields, *GROUP_OF])
    for group in sorted(set(table) & set(GROUPS)):
        if not isinstance(table[group], dict):
            raise ConfigError(f"{path}: [scan.{group}] must be a table")
        in_group = unknown_keys([f"{group}.{key}" for key in sorted(set(table[group]) - set(GROUPS[group].model_fields))],
                                list(GROUPS[group].model_fields))
        unknown = ", ".join(part for part in (unknown, in_group) if part)
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) in [scan]: {unknown}")
    try:
        return config_from_mapping(table, base_dir=path.parent)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def _detector_entries(value: Any) -> tuple[tuple[str, ...], dict[str, dict[str, Any]]]:
    """Detector names, and parameters per name, from ``detectors``: a comma-separated string, or a list
    whose items are names or tables with a ``name`` and the detector's parameters."""
    if isinstance(value, str):
        return tuple(d.strip() for d in value.split(",") if d.strip()), {}
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"detectors: expected a list of names or tables, got {type(value).__name__} {value!r}")
    names, params = [], {}
    for position, entry in enumerate(value, start=1):
        if isinstance(entry, str):
            names.append(entry.strip())
        elif isinstance(entry, dict) and isinstance(entry.get("name"), str):
            names.append(entry["name"].strip())
            if len(entry) > 1:
                params[names[-1]] = {k: v for k, v in entry.items() if k != "name"}
        else:
            raise ConfigError(
                f"detectors, entry {position}: expected a detector name or a table with name = \"...\", got {entry!r}"
            )
    return tuple(names), params


def _plain_values(values: dict[str, Any], base_dir: Path | None) -> dict[str, Any]:
    """Flat settings from text: paths resolved against ``base_dir``, detector lists parsed."""
    converted: dict[str, Any] = {}
    for key, value in values.items():
        if value is None:
            continue
        if key in _PATH_FIELDS:
            if not isinstance(value, (str, Path)):
                raise ConfigError(f"{key}: expected a path (text), got {type(value).__name__} {value!r}")
            if is_url(value):
                value = str(value)  # an fsspec URL (an input read from object storage) is not resolved
            else:
                value = (Path(base_dir) / value).resolve() if base_dir is not None else Path(value)
        elif key == "detectors":
            value, params = _detector_entries(value)
            if params:
                converted["detector_params"] = {**converted.get("detector_params", {}), **params}
        converted[key] = value
    return converted


def config_from_mapping(values: dict[str, Any], base_dir: Path | None = None, base: ScanConfig | None = None) -> ScanConfig:
    """A :class:`ScanConfig` from plain values (a TOML table, a deployment's JSON parameters).

    Keys are flat setting names or group names holding a mapping of their fields. Paths may be strings,
    relative to ``base_dir`` when given; ``detectors`` a list or a comma-separated string. Values not
    given keep those of ``base`` (default settings when ``None``).
    """
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if key in GROUPS and isinstance(value, dict):
            clash = sorted(set(value) & set(flat))
            if clash:
                raise ConfigError(f"{', '.join(clash)}: given both on its own and in {key}")
            flat |= value
        elif key in GROUPS and value is not None:
            raise ConfigError(f"{key}: expected a table of settings, got {type(value).__name__} {value!r}")
        else:
            flat[key] = value
    return (base or ScanConfig()).with_overrides(**_plain_values(flat, base_dir))
