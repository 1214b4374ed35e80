"""The one typed configuration of a scan, loadable from a TOML file and overridable from the CLI.

A pydantic model (Prefect brings pydantic): every value is checked for its type where it enters, from a
TOML file, a deployment's JSON parameters or Python, and a wrong one is a :class:`ConfigError` naming the
key, the value and the type it must have. Types are strict (``seed = "1"`` and ``force = "yes"`` are
refused rather than guessed); paths may be given as text and lists of detectors as lists.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from poisonguard.errors import ConfigError
from poisonguard.names import checked_dataset_name

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on Python 3.10
    import tomli as tomllib

DEFAULT_DETECTORS = ("ecod", "iforest", "label_model")
TASK_RUNNERS = ("default", "dask")
# How and where a scan runs, never what it decides: left out of the scan's fingerprint.
_EXECUTION_FIELDS = ("score_chunk_rows", "task_runner", "dask_address", "dask_workers")
_PROVENANCE_FIELDS = ("trust_store", "require_provenance", "manifest_max_age_hours", "clock_skew_seconds", "ledger")


class ProvenanceSettings(BaseModel):
    """The part of the settings the provenance check reads (:attr:`ScanConfig.provenance`)."""

    model_config = ConfigDict(frozen=True)

    trust_store: Path
    ledger_path: Path
    require_provenance: bool
    max_age_seconds: float
    clock_skew_seconds: float
    rescan: bool  # --force: earlier deliveries of this very batch do not count as replays


class ExecutionSettings(BaseModel):
    """Where and how a scan runs, never what it decides (:attr:`ScanConfig.execution`)."""

    model_config = ConfigDict(frozen=True)

    task_runner: str
    dask_address: str | None
    dask_workers: int | None
    score_chunk_rows: int
    chunk_rows: int | None


# Paths and the detector list come as text and lists from TOML and JSON; every other value must have its type.
_Path = Annotated[Path, Field(strict=False)]


class ScanConfig(BaseModel):
    """Everything a scan needs besides the batch file itself (frozen; paths kept as given).

    Raises :class:`ConfigError` naming the key for a value of the wrong type or out of range, or a
    combination of settings that cannot work together.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    label_col: str | None = None
    dataset: str | None = None
    out_dir: _Path = Path("poisonguard-out")
    reference: _Path | None = None
    file_format: str | None = None
    suite: _Path | None = None  # explicit suite file; else <suite_dir>/<dataset>.json, else inferred
    suite_dir: _Path = Path("expectations/suites")
    detectors: Annotated[tuple[str, ...], Field(strict=False)] = DEFAULT_DETECTORS
    # Parameters per detector name, passed to its constructor (``[[scan.detectors]]`` tables in the config
    # file: ``name = "iforest"`` and ``n_estimators = 300``); they enter the scan's fingerprint.
    detector_params: dict[str, dict[str, Any]] = Field(default_factory=dict)
    max_false_quarantine: float = 0.01  # share of clean reference rows the detectors may quarantine
    holdout_fraction: float = 0.5  # share of the reference kept aside to calibrate thresholds
    # A reference whose held-out share would be too small to set the budget's threshold (fewer than
    # 10 / max_false_quarantine rows) is cross-fitted in this many folds instead: see poisonguard.score.crossfit.
    calibration_folds: int = 5
    # A larger reference is subsampled (seeded, uniformly) to this many rows when the scan is planned:
    # 100k held-out rows already resolve a 1% budget finely, and fitting and scoring more costs time for
    # nothing. Detectors and feature-drift checks read the sample; the class-balance check counts every row.
    max_reference_rows: int = 200_000
    robust_z: float = 3.5  # no-reference rule: flag scores above median + robust_z * 1.4826 * MAD
    min_class_rows: int = 30  # fewer rows than this in a class: score it with the all-class model
    range_margin: float = 0.1  # margin on inferred numeric ranges, as a share of the observed span
    # Share of clean rows that all inferred numeric ranges together may quarantine: each range is set from
    # the reference's tail so that, over every ranged column, about this many clean rows fail one (see
    # poisonguard.expectations.ranges). A tenth of the detectors' default budget; the calibration issue
    # makes the two one budget.
    range_false_quarantine: float = 0.001
    seed: int = 0
    # A precomputed embedding of each row (from the user's own model), either one column per dimension
    # (the columns whose names start with ``embedding_prefix``) or one column of lists of numbers
    # (``embedding_column``: a Parquet list column, JSON arrays). The backdoor checks then read it instead
    # of training a probe network. At most one of the two.
    embedding_prefix: str | None = None
    embedding_column: str | None = None
    force: bool = False  # rescan even when the same batch was already scanned with the same settings
    trust_store: _Path | None = None  # JSON trust store; given, every batch's manifest and replay are checked
    require_provenance: bool = False  # refuse batches without a valid manifest (needs trust_store)
    manifest_max_age_hours: float = 168.0  # a manifest older than this is refused
    clock_skew_seconds: float = 300.0  # how far in the future a manifest's created_at may lie
    ledger: _Path | None = None  # the replay ledger; default <out_dir>/ledger.sqlite
    # Batch rows encoded and scored at a time by detectors fitted on the reference; bounds the memory of
    # scoring without changing any score.
    score_chunk_rows: int = 100_000
    # Read, validate, score and write the batch this many rows at a time (a batch larger than memory);
    # None: read it whole, as one chunk. See poisonguard.ingest.source and poisonguard.scan.chunks.
    chunk_rows: int | None = None
    # Where the scan's tasks run: "default" (Prefect's thread pool; each chunk in turn) or "dask"
    # (prefect-dask: batch chunks scored in parallel on a LocalCluster of dask_workers workers, or on the
    # existing cluster at dask_address).
    task_runner: str = "default"
    dask_address: str | None = None
    dask_workers: int | None = None  # default: one per CPU core

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as error:
            raise ConfigError(validation_message(error)) from None

    @model_validator(mode="after")
    def _check(self) -> ScanConfig:
        if not 0.0 < self.max_false_quarantine < 0.5:
            raise ConfigError(
                f"max_false_quarantine must be between 0 and 0.5, got {self.max_false_quarantine}"
            )
        if not 0.1 <= self.holdout_fraction <= 0.9:
            raise ConfigError(f"holdout_fraction must be between 0.1 and 0.9, got {self.holdout_fraction}")
        if self.robust_z <= 0:
            raise ConfigError(f"robust_z must be positive, got {self.robust_z}")
        if self.calibration_folds < 2:
            raise ConfigError(f"calibration_folds must be at least 2, got {self.calibration_folds}")
        if self.min_class_rows < 2:
            raise ConfigError(f"min_class_rows must be at least 2, got {self.min_class_rows}")
        if not 0.0 < self.range_false_quarantine < 0.5:
            raise ConfigError(
                f"range_false_quarantine must be between 0 and 0.5, got {self.range_false_quarantine}"
            )
        if self.range_margin < 0:
            raise ConfigError(f"range_margin must be zero or more, got {self.range_margin}")
        if self.max_reference_rows < 2 * self.min_class_rows:
            raise ConfigError(
                f"max_reference_rows must be at least twice min_class_rows ({2 * self.min_class_rows}), "
                f"got {self.max_reference_rows}"
            )
        if self.task_runner not in TASK_RUNNERS:
            raise ConfigError(f"task_runner must be one of {', '.join(TASK_RUNNERS)}, got {self.task_runner!r}")
        if self.dask_address is not None and self.task_runner != "dask":
            raise ConfigError("dask_address needs the dask task runner: pass --task-runner dask")
        if self.dask_workers is not None and self.dask_workers < 1:
            raise ConfigError(f"dask_workers must be at least 1, got {self.dask_workers}")
        if self.embedding_prefix is not None and self.embedding_column is not None:
            raise ConfigError("give either --embedding-prefix or --embedding-column, not both")
        if self.chunk_rows is not None and self.chunk_rows < 1:
            raise ConfigError(f"chunk_rows must be at least 1, got {self.chunk_rows}")
        if self.score_chunk_rows < 1:
            raise ConfigError(f"score_chunk_rows must be at least 1, got {self.score_chunk_rows}")
        stray = sorted(set(self.detector_params) - set(self.detectors))
        if stray:
            raise ConfigError(
                f"parameters are given for detector(s) {', '.join(stray)}, which are not in detectors "
                f"({', '.join(self.detectors)})"
            )
        if not self.detectors:
            raise ConfigError("at least one detector must be enabled")
        if self.dataset is not None:
            checked_dataset_name(self.dataset, "the dataset setting")
        if self.require_provenance and self.trust_store is None:
            raise ConfigError("require_provenance needs a trust store: pass --trust-store")
        if self.manifest_max_age_hours <= 0:
            raise ConfigError(f"manifest_max_age_hours must be positive, got {self.manifest_max_age_hours}")
        if self.clock_skew_seconds < 0:
            raise ConfigError(f"clock_skew_seconds must be zero or more, got {self.clock_skew_seconds}")
        return self

    @property
    def ledger_path(self) -> Path:
        return Path(self.ledger) if self.ledger is not None else Path(self.out_dir) / "ledger.sqlite"

    def with_overrides(self, **overrides: Any) -> ScanConfig:
        """Return a copy with every override that is not ``None`` applied."""
        given = {key: value for key, value in overrides.items() if value is not None}
        unknown = set(given) - set(type(self).model_fields)
        if unknown:
            raise ConfigError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        return ScanConfig(**(self.model_dump() | given))

    @property
    def provenance(self) -> ProvenanceSettings | None:
        """What the provenance check needs; ``None`` without a trust store (no check)."""
        if self.trust_store is None:
            return None
        return ProvenanceSettings(
            trust_store=self.trust_store, ledger_path=self.ledger_path, require_provenance=self.require_provenance,
            max_age_seconds=self.manifest_max_age_hours * 3600, clock_skew_seconds=self.clock_skew_seconds,
            rescan=self.force,
        )

    @property
    def execution(self) -> ExecutionSettings:
        return ExecutionSettings(**{name: getattr(self, name) for name in ExecutionSettings.model_fields})

    @property
    def has_embedding(self) -> bool:
        """True when the batch carries its own embedding (``embedding_prefix`` or ``embedding_column``)."""
        return self.embedding_prefix is not None or self.embedding_column is not None

    def fingerprint_fields(self) -> dict[str, Any]:
        """The settings that change a scan's rows result (not where it is written, not ``force``).

        Provenance settings are left out: with a trust store, provenance is checked on every scan anyway.
        """
        settings = self.model_dump()
        for name in ("out_dir", "force", "suite_dir", "suite", "reference", "file_format", *_EXECUTION_FIELDS,
                     *_PROVENANCE_FIELDS):
            settings.pop(name)
        settings["detectors"] = list(self.detectors)
        if not self.detector_params:  # so that scans made before detectors took parameters keep their fingerprint
            settings.pop("detector_params")
        return settings


_PATH_FIELDS = {"out_dir", "reference", "suite", "suite_dir", "trust_store", "ledger"}


def load_config(path: Path) -> ScanConfig:
    """Read a ``[scan]`` table from a TOML file into a :class:`ScanConfig`.

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
    unknown = sorted(set(table) - set(ScanConfig.model_fields))
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) in [scan]: {', '.join(unknown)}")
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


def config_from_mapping(values: dict[str, Any], base_dir: Path | None = None, base: ScanConfig | None = None) -> ScanConfig:
    """A :class:`ScanConfig` from plain values (a TOML table, a deployment's JSON parameters).

    Paths may be strings, relative to ``base_dir`` when given; ``detectors`` a list or a comma-separated
    string. Values not given keep those of ``base`` (default settings when ``None``).
    """
    converted: dict[str, Any] = {}
    for key, value in values.items():
        if value is None:
            continue
        if key in _PATH_FIELDS:
            if not isinstance(value, (str, Path)):
                raise ConfigError(f"{key}: expected a path (text), got {type(value).__name__} {value!r}")
            value = (Path(base_dir) / value).resolve() if base_dir is not None else Path(value)
        elif key == "detectors":
            value, params = _detector_entries(value)
            if params:
                converted["detector_params"] = {**converted.get("detector_params", {}), **params}
        converted[key] = value
    return (base or ScanConfig()).with_overrides(**converted)


def validation_message(error: ValidationError) -> str:
    """pydantic's errors as one line per key: ``seed: expected an integer, got str '1'``."""
    problems = []
    for found in error.errors(include_url=False):
        key = ".".join(str(part) for part in found["loc"]) or "settings"
        value = found.get("input")
        problems.append(f"{key}: {found['msg'].lower()}, got {type(value).__name__} {value!r}")
    return "; ".join(problems)
