"""The one typed configuration of a scan, loadable from a TOML file and overridable from the CLI.

Settings come in groups, one per part of the pipeline, and each part is handed only its group:

    io            what is read and where results go (label, dataset, reference, output folder, chunks)
    expectations  the schema suite and its inferred numeric ranges
    detection     which detectors run, with which parameters
    calibration   the false-quarantine budget and how the reference is split to hold it
    provenance    manifests, the trust store and the replay ledger
    execution     where the scan runs (task runner, Dask), never what it decides

A pydantic model (Prefect brings pydantic): every value is checked for its type where it enters, from a
TOML file, a deployment's JSON parameters or Python, and a wrong one is a :class:`ConfigError` naming the
key, the value and the type it must have. Types are strict (``seed = "1"`` and ``force = "yes"`` are
refused rather than guessed); paths may be given as text and lists of detectors as lists.

Every setting has a unique name, so a flat key is shorthand for its group: ``ScanConfig(label_col="y",
max_false_quarantine=0.02)``, ``--max-false-quarantine`` on the command line and ``max_false_quarantine``
in ``[scan]`` all set ``calibration.max_false_quarantine``; a config file may also write the group as a
table (``[scan.calibration]``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from poisonguard.errors import ConfigError
from poisonguard.names import checked_dataset_name, closest_name, is_url

# Every detector that applies to what a scan is given (labels, a reference): see poisonguard.detectors.
DEFAULT_DETECTORS = ("auto",)
TASK_RUNNERS = ("default", "dask")

# Paths and the detector list come as text and lists from TOML and JSON; every other value must have its type.
_Path = Annotated[Path, Field(strict=False)]


def _location(value: Any) -> Any:
    return str(value) if is_url(value) else Path(value) if isinstance(value, str) else value


# An input a scan only reads (the reference, a suite, the trust store): a local path, or an fsspec URL
# (s3://bucket/key) that the scan copies into its snapshot folder first (poisonguard.ingest.fetch).
_Location = Annotated[Path | str, BeforeValidator(_location)]


class _Settings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


class IOSettings(_Settings):
    """What a scan reads and where it writes (``ScanConfig.io``)."""

    label_col: str | None = None
    dataset: str | None = None
    out_dir: _Path = Path("poisonguard-out")
    reference: _Location | None = None
    file_format: str | None = None
    # Read, validate, score and write the batch this many rows at a time (a batch larger than memory);
    # None: read it whole, as one chunk. See poisonguard.ingest.source and poisonguard.pipeline.chunks.
    chunk_rows: int | None = None
    # A precomputed embedding of each row (from the user's own model), either one column per dimension
    # (the columns whose names start with ``embedding_prefix``) or one column of lists of numbers
    # (``embedding_column``: a Parquet list column, JSON arrays). The backdoor checks then read it instead
    # of training a probe network. At most one of the two.
    embedding_prefix: str | None = None
    embedding_column: str | None = None
    # Where `poisonguard review serve` serves this output directory (http://host:port): Prefect artifacts
    # then link each batch's review page. Not in the fingerprint.
    review_url: str | None = None
    # An fsspec URL (s3://bucket/prefix, gs://..., file://...) that each batch's outputs are copied to, all
    # or none, for readers off this machine; out_dir stays the working area (ledger, audit log, review).
    # See poisonguard.write.remote. Not in the fingerprint.
    publish_url: str | None = None
    # Column roles. ``id_col``: a key of each row (a patient or order id), kept in the outputs and shown in
    # review; ``ignore_cols``: columns carried through as they are. Neither is ever a feature of a detector
    # nor given a range or value set by an inferred suite: a new id is not an outlier.
    id_col: str | None = None
    ignore_cols: Annotated[tuple[str, ...], Field(strict=False)] = ()
    # Kind overrides: columns an inferred suite checks and the detectors read as categories (a numeric code,
    # a zip code) or as free text, whatever their values look like. Recorded in the suite.
    categorical_cols: Annotated[tuple[str, ...], Field(strict=False)] = ()
    text_cols: Annotated[tuple[str, ...], Field(strict=False)] = ()

    @model_validator(mode="after")
    def _check(self) -> IOSettings:
        if self.embedding_prefix is not None and self.embedding_column is not None:
            raise ConfigError("give either --embedding-prefix or --embedding-column, not both")
        if self.review_url is not None and not self.review_url.startswith(("http://", "https://")):
            raise ConfigError(f"review_url must be an http:// or https:// address, got {self.review_url!r}")
        if self.publish_url is not None and "://" not in self.publish_url:
            raise ConfigError(f"publish_url must be a URL such as s3://bucket/prefix, got {self.publish_url!r}")
        roles = [c for c in (self.label_col, self.id_col) if c is not None]
        clash = sorted(set(roles) & set(self.ignore_cols)) or ([self.id_col] if self.id_col == self.label_col
                                                               and self.id_col is not None else [])
        if clash:
            raise ConfigError(f"column {clash[0]!r} is given two roles (label, id, ignored); give it one")
        kinds = [*self.categorical_cols, *self.text_cols]
        doubled = sorted({c for c in kinds if kinds.count(c) > 1} | (set(kinds) & {*roles, *self.ignore_cols}))
        if doubled:
            raise ConfigError(f"column {doubled[0]!r} is given a kind (categorical_cols, text_cols) twice, or a kind "
                              "and a role (label, id, ignored); give it one")
        if self.chunk_rows is not None and self.chunk_rows < 1:
            raise ConfigError(f"chunk_rows must be at least 1, got {self.chunk_rows}")
        if self.dataset is not None:
            checked_dataset_name(self.dataset, "the dataset setting")
        return self

    @property
    def column_roles(self) -> dict[str, str]:
        """The columns no detector reads and no inferred range or value set checks, with their role: ``id``
        or ``ignored``."""
        return {**dict.fromkeys(self.ignore_cols, "ignored"), **({self.id_col: "id"} if self.id_col else {})}

    @property
    def column_kinds(self) -> dict[str, str]:
        """The kinds given for columns (``categorical`` or ``text``), overriding what their values suggest."""
        return {**dict.fromkeys(self.categorical_cols, "categorical"), **dict.fromkeys(self.text_cols, "text")}

    @property
    def has_embedding(self) -> bool:
        """True when the batch carries its own embedding (``embedding_prefix`` or ``embedding_column``)."""
        return self.embedding_prefix is not None or self.embedding_column is not None


class ExpectationSettings(_Settings):
    """The schema suite a batch is validated against (``ScanConfig.expectations``)."""

    suite: _Location | None = None  # explicit suite file; else <suite_dir>/<dataset>.json, else inferred
    suite_dir: _Path = Path("expectations/suites")
    range_margin: float = 0.1  # margin on inferred numeric ranges, as a share of the observed span
    # The part of max_false_quarantine (at most a tenth) that inferred ranges and value sets may spend:
    # each range is set from the reference's tail so that, over every judged column, about this many clean
    # rows fail one, and a column whose rule would spend more gets none (see
    # poisonguard.expectations.ranges). The detectors get the rest of the budget (ScanConfig.detector_budget).
    range_false_quarantine: float = 0.001

    @model_validator(mode="after")
    def _check(self) -> ExpectationSettings:
        if not 0.0 < self.range_false_quarantine < 0.5:
            raise ConfigError(
                f"range_false_quarantine is a share of clean rows, between 0 and 0.5 (1% is 0.01), got {self.range_false_quarantine}"
            )
        if self.range_margin < 0:
            raise ConfigError(f"range_margin must be zero or more, got {self.range_margin}")
        return self


class DetectionSettings(_Settings):
    """Which detectors score the rows (``ScanConfig.detection``)."""

    detectors: Annotated[tuple[str, ...], Field(strict=False)] = DEFAULT_DETECTORS
    # Parameters per detector name, passed to its constructor (``[[scan.detectors]]`` tables in the config
    # file: ``name = "iforest"`` and ``n_estimators = 300``); they enter the scan's fingerprint.
    detector_params: dict[str, dict[str, Any]] = Field(default_factory=dict)
    min_class_rows: int = 30  # fewer rows than this in a class: score it with the all-class model

    @model_validator(mode="after")
    def _check(self) -> DetectionSettings:
        if not self.detectors:
            raise ConfigError("at least one detector must be enabled")
        if self.min_class_rows < 2:
            raise ConfigError(f"min_class_rows must be at least 2, got {self.min_class_rows}")
        stray = sorted(set(self.detector_params) - set(self.detectors))
        if stray and "auto" not in self.detectors:  # auto's members take parameters too
            raise ConfigError(
                f"parameters are given for detector(s) {', '.join(stray)}, which are not in detectors "
                f"({', '.join(self.detectors)})"
            )
        return self

    def params_of(self, name: str) -> dict[str, Any]:
        """The constructor parameters configured for detector ``name`` (none: ``{}``)."""
        return dict(self.detector_params.get(name, {}))


class CalibrationSettings(_Settings):
    """The false-quarantine budget and the reference rows that set it (``ScanConfig.calibration``)."""

    # Share of clean rows a scan may quarantine by judgement: detectors and inferred schema rules together.
    max_false_quarantine: float = 0.01
    holdout_fraction: float = 0.5  # share of the reference kept aside to calibrate thresholds
    # A reference whose held-out share would be too small to set the budget's threshold (fewer than
    # 10 / max_false_quarantine rows) is cross-fitted in this many folds instead: see poisonguard.score.crossfit.
    calibration_folds: int = 5
    # A larger reference is subsampled (seeded, uniformly) to this many rows when the scan is planned:
    # 100k held-out rows already resolve a 1% budget finely, and fitting and scoring more costs time for
    # nothing. Detectors and feature-drift checks read the sample; the class-balance check counts every row.
    max_reference_rows: int = 200_000
    # No-reference rule: the share of any class's rows that may be poison. Each detector's limit is then the
    # tail of the rows below that share, extrapolated (poisonguard.decide.calibration.tail_limit).
    batch_poison_share: float = 0.2
    # Refuse to scan (exit 2) unless the budget can hold "with 90% confidence": a reference with at least
    # 10 / detector budget rows (1,112 at the default 1%). Without it a scan runs and its report says which
    # weaker promise it makes.
    strict: bool = False

    @model_validator(mode="after")
    def _check(self) -> CalibrationSettings:
        if not 0.0 < self.max_false_quarantine < 0.5:
            raise ConfigError(
                f"max_false_quarantine is a share of clean rows, between 0 and 0.5 (1% is 0.01), got {self.max_false_quarantine}"
            )
        if not 0.1 <= self.holdout_fraction <= 0.9:
            raise ConfigError(f"holdout_fraction must be between 0.1 and 0.9, got {self.holdout_fraction}")
        if not 0.0 < self.batch_poison_share <= 0.5:
            raise ConfigError(f"batch_poison_share must be above 0 and at most 0.5, got {self.batch_poison_share}")
        if self.calibration_folds < 2:
            raise ConfigError(f"calibration_folds must be at least 2, got {self.calibration_folds}")
        return self


class ProvenanceSettings(_Settings):
    """Manifests, sources and replays (``ScanConfig.provenance``); no trust store means no check."""

    trust_store: _Location | None = None  # JSON trust store; given, every batch's manifest and replay are checked
    require_provenance: bool = False  # refuse batches without a valid manifest (needs trust_store)
    manifest_max_age_hours: float = 168.0  # a manifest older than this is refused
    clock_skew_seconds: float = 300.0  # how far in the future a manifest's created_at may lie
    ledger: _Path | None = None  # the replay ledger; default <out_dir>/ledger.sqlite

    @model_validator(mode="after")
    def _check(self) -> ProvenanceSettings:
        if self.require_provenance and self.trust_store is None:
            raise ConfigError("require_provenance needs a trust store: pass --trust-store")
        if self.manifest_max_age_hours <= 0:
            raise ConfigError(f"manifest_max_age_hours must be positive, got {self.manifest_max_age_hours}")
        if self.clock_skew_seconds < 0:
            raise ConfigError(f"clock_skew_seconds must be zero or more, got {self.clock_skew_seconds}")
        return self

    @property
    def checked(self) -> bool:
        return self.trust_store is not None

    @property
    def max_age_seconds(self) -> float:
        return self.manifest_max_age_hours * 3600


class ExecutionSettings(_Settings):
    """Where and how a scan runs, never what it decides (``ScanConfig.execution``; not in the fingerprint)."""

    # Where the scan's tasks run: "default" (Prefect's thread pool; each chunk in turn) or "dask"
    # (prefect-dask: batch chunks scored in parallel on a LocalCluster of dask_workers workers, or on the
    # existing cluster at dask_address).
    task_runner: str = "default"
    dask_address: str | None = None
    dask_workers: int | None = None  # default: one per CPU core
    # Batch rows encoded and scored at a time by detectors fitted on the reference; bounds the memory of
    # scoring without changing any score.
    score_chunk_rows: int = 100_000

    @model_validator(mode="after")
    def _check(self) -> ExecutionSettings:
        if self.task_runner not in TASK_RUNNERS:
            raise ConfigError(f"task_runner must be one of {', '.join(TASK_RUNNERS)}, got {self.task_runner!r}")
        if self.dask_address is not None and self.task_runner != "dask":
            raise ConfigError("dask_address needs the dask task runner: pass --task-runner dask")
        if self.dask_workers is not None and self.dask_workers < 1:
            raise ConfigError(f"dask_workers must be at least 1, got {self.dask_workers}")
        if self.score_chunk_rows < 1:
            raise ConfigError(f"score_chunk_rows must be at least 1, got {self.score_chunk_rows}")
        return self


GROUPS: dict[str, type[_Settings]] = {
    "io": IOSettings,
    "expectations": ExpectationSettings,
    "detection": DetectionSettings,
    "calibration": CalibrationSettings,
    "provenance": ProvenanceSettings,
    "execution": ExecutionSettings,
}
# Each setting's group, by its (unique) name: what lets a flat key stand for its group's field.
GROUP_OF = {name: group for group, model in GROUPS.items() for name in model.model_fields}
# Settings that never change which rows a scan quarantines: left out of the scan's fingerprint. Provenance
# is left out too: with a trust store it is checked on every scan anyway.
_NOT_FINGERPRINTED = {"out_dir", "reference", "file_format", "suite", "suite_dir", "force", "strict", "review_url",
                      "publish_url", *ExecutionSettings.model_fields, *ProvenanceSettings.model_fields}


class ScanConfig(_Settings):
    """Everything a scan needs besides the batch file itself (frozen; paths kept as given).

    Raises :class:`ConfigError` naming the key for a value of the wrong type or out of range, or a
    combination of settings that cannot work together.
    """

    io: IOSettings = Field(default_factory=IOSettings)
    expectations: ExpectationSettings = Field(default_factory=ExpectationSettings)
    detection: DetectionSettings = Field(default_factory=DetectionSettings)
    calibration: CalibrationSettings = Field(default_factory=CalibrationSettings)
    provenance: ProvenanceSettings = Field(default_factory=ProvenanceSettings)
    execution: ExecutionSettings = Field(default_factory=ExecutionSettings)
    seed: int = 0  # every random choice of a scan: subsamples, splits, detectors
    force: bool = False  # rescan even when the same batch was already scanned with the same settings

    # Only here: pydantic calls a model's own __init__ for nested values too, and an error raised inside a
    # group would lose the group's name from its key.
    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as error:
            raise ConfigError(validation_message(error)) from None

    @model_validator(mode="before")
    @classmethod
    def _group_flat_keys(cls, values: Any) -> Any:
        """Move each flat key (``max_false_quarantine``) into its group (``calibration``)."""
        if not isinstance(values, dict):
            return values
        grouped: dict[str, Any] = {}
        for key, value in values.items():
            if key in GROUPS and isinstance(value, BaseModel):
                value = value.model_dump()
            if key in GROUPS and isinstance(value, dict):
                grouped[key] = {**grouped.get(key, {}), **value}
            elif key in GROUP_OF:
                grouped.setdefault(GROUP_OF[key], {})[key] = value
            else:
                grouped[key] = value
        return grouped

    @model_validator(mode="after")
    def _check(self) -> ScanConfig:
        if self.calibration.max_reference_rows < 2 * self.detection.min_class_rows:
            raise ConfigError(
                f"max_reference_rows must be at least twice min_class_rows ({2 * self.detection.min_class_rows}), "
                f"got {self.calibration.max_reference_rows}"
            )
        return self

    @property
    def schema_budget(self) -> float:
        """The part of ``max_false_quarantine`` the inferred ranges and value sets may spend together:
        ``range_false_quarantine``, but never more than a tenth of the budget (a budget of 0.1% leaves the
        schema 0.01%)."""
        return min(self.expectations.range_false_quarantine, self.calibration.max_false_quarantine / 10)

    @property
    def detector_budget(self) -> float:
        """The share of clean rows the detectors may quarantine: ``max_false_quarantine`` is one budget for
        every rule that judges a row, and the schema's rules spend :attr:`schema_budget` of it."""
        return round(self.calibration.max_false_quarantine - self.schema_budget, 12)

    @property
    def ledger_path(self) -> Path:
        """The replay ledger: ``provenance.ledger``, else ``<out_dir>/ledger.sqlite``."""
        ledger = self.provenance.ledger
        return Path(ledger) if ledger is not None else Path(self.io.out_dir) / "ledger.sqlite"

    def with_overrides(self, **overrides: Any) -> ScanConfig:
        """Return a copy with every override that is not ``None`` applied: flat keys (``label_col``) or a
        group's fields as a mapping (``calibration={"batch_poison_share": 0.1}``), merged into the current group."""
        given = {key: value for key, value in overrides.items() if value is not None}
        unknown = set(given) - set(GROUP_OF) - set(type(self).model_fields)
        if unknown:
            raise ConfigError(f"unknown setting(s): {unknown_keys(sorted(unknown), [*GROUP_OF, *type(self).model_fields])}")
        values = self.model_dump()
        for key, value in given.items():
            # a flat key goes in as it is: _group_flat_keys moves it into its group, after the groups above
            values[key] = values[key] | value if key in GROUPS and isinstance(value, dict) else value
        return ScanConfig(**values)

    def flat(self) -> dict[str, Any]:
        """Every setting by its own name, groups dissolved (what the report shows)."""
        values = self.model_dump()
        return {name: value for group in GROUPS for name, value in values.pop(group).items()} | values

    def fingerprint_fields(self) -> dict[str, Any]:
        """The settings that change a scan's rows result (not where it is written, not ``force``)."""
        settings = {key: value for key, value in self.flat().items() if key not in _NOT_FINGERPRINTED}
        settings["detectors"] = list(self.detection.detectors)
        if not self.detection.detector_params:  # scans made before detectors took parameters keep their fingerprint
            settings.pop("detector_params")
        for role in ("id_col", "ignore_cols", "categorical_cols", "text_cols"):  # and scans made before columns took roles
            if not settings.get(role):
                settings.pop(role)
        return settings


def unknown_keys(unknown: list[str], known: list[str]) -> str:
    """``"max_false_quarantne (did you mean max_false_quarantine?), foo"``: each unknown key with the closest
    known one, where one is close."""
    named = []
    for key in unknown:
        close = closest_name(key.rpartition(".")[2], known)
        named.append(f"{key} (did you mean {close}?)" if close else key)
    return ", ".join(named)


def validation_message(error: ValidationError) -> str:
    """pydantic's errors as one line per key: ``seed: expected an integer, got str '1'``."""
    problems = []
    for found in error.errors(include_url=False):
        key = ".".join(str(part) for part in found["loc"]) or "settings"
        value = found.get("input")
        problems.append(f"{key}: {found['msg'].lower()}, got {type(value).__name__} {value!r}")
    return "; ".join(problems)
