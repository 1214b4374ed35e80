"""Decide, before any row is scored, what a scan of one batch will use: suite, label, reference, kinds.

Suite lookup order: ``config.expectations.suite`` (an explicit file), else ``<suite_dir>/<dataset>.json``, else one
inferred in memory from the reference, else none (then only the label column's presence is checked).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from poisonguard import ROW_ID, __version__
from poisonguard.config import ScanConfig
from poisonguard.errors import ConfigError, InputError
from poisonguard.expectations.suite import (
    EMBEDDING,
    infer_suite,
    load_suite,
    suite_columns,
    suite_embeddings,
    suite_kinds,
    suite_label_col,
    suite_roles,
    suite_types,
)
from poisonguard.expectations.validate import coerce_to_kinds
from poisonguard.featurize.features import infer_kinds
from poisonguard.featurize.representations import embedding_columns
from poisonguard.ingest.read import Batch, header_columns, read_batch
from poisonguard.names import column_not_found
from poisonguard.report.figures import class_counts


@dataclass
class ScanPlan:
    """What the scan of one batch will use; ``fingerprint`` changes whenever the result could.

    ``reference`` holds the trusted rows the detectors are fitted and calibrated on: every row of the
    reference file up to ``max_reference_rows``, else a seeded uniform sample of that many (no more are
    ever used, and a large reference held whole for the scan would cost more memory than the batch's
    scores). ``reference_class_counts`` counts every row of the file.
    """

    label_col: str | None
    suite: Any | None
    suite_origin: str
    kinds: dict[str, str]
    reference: pd.DataFrame | None
    reference_sha256: str | None
    fingerprint: str
    reference_class_counts: dict[str, int] | None = None


def plan_scan(batch: Batch, config: ScanConfig) -> ScanPlan:
    """Resolve suite, label column and reference for ``batch``.

    Raises :class:`InputError` or :class:`ConfigError` naming the file or column when the options do not
    fit together (label column absent everywhere, suite and reference disagree, reference unreadable).
    """
    if config.io.has_embedding and batch.frame is not None:
        try:
            embedding_columns(batch.frame.columns, config.io)
        except ValueError as exc:
            raise InputError(f"{batch.source_path}: {exc}") from None
    reference_batch = _read_reference(config, batch.dataset)
    if config.io.has_embedding and reference_batch is not None:
        try:
            embedding_columns(reference_batch.frame.columns, config.io)
        except ValueError as exc:
            raise ConfigError(f"reference {config.io.reference}: {exc}") from None
    suite, origin = _resolve_suite(config, batch.dataset, reference_batch)
    label_col = _resolve_label(config, suite, origin, batch, reference_batch)

    reference, reference_counts = None, None
    if reference_batch is not None:
        reference = reference_batch.frame
        if label_col is not None and label_col in reference:
            reference_counts = class_counts(reference[label_col])
        reference = _at_most(reference, config.calibration.max_reference_rows, config.seed)
        if suite is not None:
            reference = _coerce_reference(reference, suite, config.io.reference)
    _require_role_columns(config, batch)
    if suite is not None:
        kinds = {c: k for c, k in suite_kinds(suite).items() if c != label_col}
        _require_given_kinds(config, kinds, origin)
    elif batch.frame is not None:
        kinds = infer_kinds(batch.frame, label_col) | config.io.column_kinds
    else:
        kinds = {}
    # The id and ignored columns are carried through, never read by a detector.
    unjudged = set(config.io.column_roles) | (set(suite_roles(suite)) if suite is not None else set())
    kinds = {c: k for c, k in kinds.items() if c not in unjudged}
    column = config.io.embedding_column
    if column is not None and column in kinds and kinds[column] != EMBEDDING:
        hint = "; a CSV file cannot hold lists: give one column per dimension and --embedding-prefix"
        raise InputError(
            f"{batch.source_path}: column {column!r} holds {kinds[column]} values, not lists of numbers, so it "
            f"cannot be the embedding{hint if batch.file_format == 'csv' else ''}"
        )
    fingerprint_source = {
        "version": __version__,
        "settings": config.fingerprint_fields() | {"label_col": label_col},
        "reference_sha256": reference_batch.sha256 if reference_batch else None,
        "suite": suite.to_json_dict() if suite is not None else None,
    }
    if suite is not None and origin.startswith("inferred"):
        fingerprint_source["suite"]["meta"]["poisonguard"].pop("created_at", None)
    fingerprint = hashlib.sha256(json.dumps(fingerprint_source, sort_keys=True, default=str).encode()).hexdigest()
    return ScanPlan(
        label_col=label_col,
        suite=suite,
        suite_origin=origin,
        kinds=kinds,
        reference=reference,
        reference_sha256=reference_batch.sha256 if reference_batch else None,
        fingerprint=fingerprint[:16],
        reference_class_counts=reference_counts,
    )


def _require_role_columns(config: ScanConfig, batch: Batch) -> None:
    """An id or ignored column the batch does not have is a mistake: :class:`InputError` with the closest name."""
    if batch.frame is not None:
        columns = [str(c) for c in batch.frame.columns if c != ROW_ID]
    else:  # read in chunks: the header says
        try:
            columns = header_columns(batch.read_path, batch.file_format)
        except Exception:  # noqa: BLE001 - a header that cannot be read rejects the batch in the scan
            return
    for column, role in (config.io.column_roles | config.io.column_kinds).items():
        if column not in columns:
            raise InputError(column_not_found(batch.source_path, role, column, columns))


def _require_given_kinds(config: ScanConfig, kinds: dict[str, str], origin: str) -> None:
    """A kind given for a column that the suite records otherwise is a mistake: :class:`ConfigError` saying how
    to rebuild the suite (a stored suite is the one place a dataset's schema lives; a scan does not edit it)."""
    for column, kind in config.io.column_kinds.items():
        if column in kinds and kinds[column] != kind:
            flag = "--categorical-cols" if kind == "categorical" else "--text-cols"
            raise ConfigError(
                f"suite {origin} records column {column!r} as {kinds[column]}, and {flag} makes it {kind}; rebuild "
                f"the suite with `poisonguard expectations init ... {flag} {column} --force`, or leave {flag} out"
            )


def _at_most(frame: pd.DataFrame, rows: int, seed: int) -> pd.DataFrame:
    """``frame`` when it has at most ``rows`` rows, else a seeded uniform sample of ``rows`` of them, in order."""
    if len(frame) <= rows:
        return frame
    kept = np.sort(np.random.default_rng(seed).choice(len(frame), rows, replace=False))
    return frame.iloc[kept].reset_index(drop=True)


def _read_reference(config: ScanConfig, dataset: str) -> Batch | None:
    if config.io.reference is None:
        return None
    reference = read_batch(Path(config.io.reference), dataset=dataset)
    if reference.frame is None:
        raise ConfigError(f"reference {config.io.reference}: {reference.unreadable}")
    return reference


def _resolve_suite(config: ScanConfig, dataset: str, reference: Batch | None) -> tuple[Any | None, str]:
    if config.expectations.suite is not None:
        return load_suite(Path(config.expectations.suite)), str(config.expectations.suite)
    stored = Path(config.expectations.suite_dir) / f"{dataset}.json"
    if stored.exists():
        return load_suite(stored), str(stored)
    if reference is not None:
        suite = infer_suite(
            reference.frame, dataset, config.io.label_col, config.expectations.range_margin, source=str(config.io.reference),
            range_false_quarantine=config.schema_budget, roles=config.io.column_roles, kinds=config.io.column_kinds,
        )
        return suite, f"inferred from {config.io.reference}"
    return None, "none (no suite file and no reference: schema checks limited to the label column)"


def _resolve_label(
    config: ScanConfig, suite: Any | None, origin: str, batch: Batch, reference: Batch | None
) -> str | None:
    recorded = suite_label_col(suite) if suite is not None else None
    if config.io.label_col is None:
        return recorded
    if suite is not None:
        if config.io.label_col not in suite_columns(suite):
            raise InputError(
                f"label column {config.io.label_col!r} is not a column of the suite {origin}; "
                f"its columns are: {', '.join(suite_columns(suite))}"
            )
        if recorded is not None and recorded != config.io.label_col:
            raise ConfigError(
                f"suite {origin} names {recorded!r} as the label column, not {config.io.label_col!r}; "
                "drop --label-col or fix the suite"
            )
        return config.io.label_col
    if batch.frame is not None and config.io.label_col not in batch.frame.columns:
        columns = [str(c) for c in batch.frame.columns if c != ROW_ID]
        raise InputError(column_not_found(batch.source_path, "label", config.io.label_col, columns))
    return config.io.label_col


def _coerce_reference(reference: pd.DataFrame, suite: Any, path: Path | None) -> pd.DataFrame:
    expected = set(suite_columns(suite))
    actual = set(reference.columns) - {ROW_ID}
    if expected != actual:
        raise ConfigError(
            f"reference {path} does not match the suite's columns "
            f"(missing: {sorted(expected - actual)}, extra: {sorted(actual - expected)})"
        )
    coerced, structural, _, _ = coerce_to_kinds(reference, suite_kinds(suite), suite_embeddings(suite),
                                                suite_types(suite))
    if structural:
        raise ConfigError(f"reference {path}: {structural[0].message}")
    return coerced
