"""Which configured detectors run on a batch, each made how, reading which view of the rows."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import sparse

from poisonguard.cells import as_text
from poisonguard.config import ScanConfig
from poisonguard.detectors import ClassConditional, Detector, detector_spec, expand_auto, make_detector
from poisonguard.detectors.spec import READS
from poisonguard.featurize.features import FeatureEncoder, row_texts, text_columns
from poisonguard.featurize.representations import EmbeddingView, Probe


def has_enough_reference(reference: pd.DataFrame | None, config: ScanConfig) -> bool:
    """Whether ``reference`` can be split into fitting and calibration parts (reference mode)."""
    return reference is not None and len(reference) >= 2 * config.detection.min_class_rows


def configured_detector(name: str, label_col: str | None, config: ScanConfig):
    detector = make_detector(name, seed=config.seed, **config.detection.detector_params.get(name, {}))
    if label_col and detector.spec.per_class:
        return ClassConditional(detector, config.detection.min_class_rows)
    return detector


def chosen_detectors(config: ScanConfig, has_reference: bool) -> list[str]:
    """The configured detectors, ``auto`` expanded for a scan with or without a trusted reference."""
    return expand_auto(config.detection.detectors, "reference" if has_reference else "batch")


def runnable_detectors(config: ScanConfig, label_col: str | None, has_reference: bool, kinds: dict[str, str],
                       reference_class_rows: int | None = None) -> tuple[list[str], dict[str, str]]:
    """The configured detectors that can run here, and why each of the others cannot. A detector that
    ``auto`` chose and that cannot run is left out silently: auto promises only what applies.
    ``reference_class_rows``: the reference's rows in its smallest class (``None``: not counted)."""
    runnable, skipped = [], {}
    explicit = set(config.detection.detectors)
    for name in chosen_detectors(config, has_reference):
        spec = detector_spec(name)
        if spec.needs_labels and label_col is None:
            skipped[name] = "needs a label column (--label-col)"
        elif spec.needs_reference and not has_reference:
            skipped[name] = "needs trusted reference data (--reference)"
        elif spec.reads == "text" and not text_columns(kinds, label_col):
            skipped[name] = "reads free text, and the batch has no text column"
        elif reference_class_rows is not None and reference_class_rows < spec.min_class_rows:
            skipped[name] = (f"needs {spec.min_class_rows:,} reference rows in every class, and the smallest "
                             f"class has {reference_class_rows:,}")
        elif name not in explicit and (reference_class_rows or 0) < spec.auto_min_class_rows:
            continue  # auto runs it on large references only; named, it runs
        else:
            runnable.append(name)
    skipped = {name: why for name, why in skipped.items() if name in explicit}
    return runnable, skipped


def labels_of(frame: pd.DataFrame, label_col: str | None) -> np.ndarray | None:
    """The label column as text objects (``<missing>`` for nulls), one shared object per class: a string
    object per row would cost about 50 bytes a row for labels such as ``approve``."""
    if label_col is None:
        return None
    codes, classes = pd.factorize(as_text(frame[label_col]).fillna("<missing>"))
    return np.asarray(classes, dtype=object)[codes]


def reads(detectors: dict[str, Detector], view: str) -> bool:
    """Whether any of ``detectors`` reads ``view`` (a value of :attr:`DetectorSpec.reads`: ``probe``, the
    backdoor checks' representation; ``text``, the rows' free text; ``words``, free text as its full TF-IDF,
    for the label models; ``values``, the encoded columns without free text's SVD dimensions, for the checks
    of repeated values), so that a view is built only when one reads it. Raises ``ValueError`` for a view
    no detector can read."""
    if view not in READS:
        raise ValueError(f"no detector reads {view!r}; views are {', '.join(READS)}")
    return any(d.spec.reads == view for d in detectors.values())


def views_of(detectors: dict[str, Detector], frame: pd.DataFrame, X: np.ndarray, encoder: FeatureEncoder,
             representation: Probe | EmbeddingView | None, texts: list[str] = ()) -> dict[str, np.ndarray]:
    """What each of ``detectors`` reads of the rows of ``frame``, encoded as ``X`` by ``encoder``:
    ``representation``'s view of them (the batch's own embedding, a probe's activations) for the backdoor
    checks, the joined text of the ``texts`` columns for the text checks, ``X`` without them for the checks
    of repeated values (:meth:`FeatureEncoder.without_text`), the rows with their words
    (:meth:`FeatureEncoder.words`) for the label models, each computed once and only when one reads it,
    else ``X``."""
    views = {"features": X}
    if representation is not None and reads(detectors, "probe"):
        views["probe"] = representation.rows(frame, X)
    if reads(detectors, "text"):
        views["text"] = row_texts(frame, list(texts))
    if reads(detectors, "words"):
        views["words"] = encoder.words(frame, X)
    if reads(detectors, "values"):
        views["values"] = encoder.without_text(X)
    return {name: views.get(d.spec.reads, X) for name, d in detectors.items()}


def stack_rows(parts: list) -> np.ndarray | sparse.csr_matrix:
    """The rows of ``parts`` (views of consecutive rows: arrays, or sparse matrices for ``words``) stacked."""
    if any(sparse.issparse(part) for part in parts):
        return sparse.vstack(parts, format="csr")
    return np.concatenate(parts)


def cannot_fit(name: str, error: ValueError) -> str:
    """The report's reason that detector ``name`` was skipped: the rows given cannot fit it (a reference
    with one class for a label model, too few rows). A detector raises ``ValueError`` for such data."""
    return f"cannot run on these rows: {error}"
