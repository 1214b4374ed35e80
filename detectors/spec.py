"""What a detector needs and how a scan fits it, declared once per detector class.

The scan reads nothing else about a detector: whether it can run (labels, a reference), how it is fitted
(inductively, transductively, out of fold), what it reads (the encoded columns or a representation) and
how its flags are set without a reference (a tail limit fitted to its scores or a threshold of its own).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

FITTING = ("inductive", "transductive", "out_of_fold")
READS = ("features", "values", "words", "probe", "text")
AUTO_SETTINGS = ("reference", "batch")  # a trusted reference is given / the batch alone
EXPLAINS = (None, "label", "features")
_REASON = re.compile(r"[a-z][a-z0-9_]*")
# Trusted rows a class needs before ``auto`` runs a detector that helps on large references and, on small
# ones, mostly shares the union's budget (``label_trees``, ``knn``). The development table's small references
# (wine's 24-29 rows a class, digits' about 90, breast_cancer's about 106) sit below; its large ones (tickets'
# 485, the shop's 1,686, the photo patches' 2,475, the synthetic table's 3,330) above.
LARGE_CLASS_ROWS = 200


@dataclass(frozen=True)
class DetectorSpec:
    """A detector's declared needs and fitting (``spec`` on its class; checked when it is registered).

    ``reason``: the family of the reason code a flag gives a row (``outlier`` -> ``outlier:<name>``).
    ``per_class``: fit one copy per label class when a label column is given.
    ``needs_labels`` / ``needs_reference``: cannot run without a label column / trusted reference rows.
    ``fitting``: ``inductive`` scores new rows as it scores the rows it was fitted on; ``transductive``
    judges rows against the very rows it is fitted with (spectral statistics, clusters, neighbours), so
    a scan fits it on the batch with the held-out trusted rows, or on a sample of the batch when read in
    chunks; ``out_of_fold`` scores only the rows it was fitted on (cannot run on chunks).
    ``reads``: ``features`` (the encoded columns, dense), ``values`` (the same without free text's SVD
    dimensions: for the checks of repeated values), ``words`` (the same with each free-text column as
    its full TF-IDF, a scipy sparse matrix where there is free text, else the dense ``features``: for models
    of the label, which one word can decide), ``probe`` (the batch's own embedding, or the hidden
    activations of a small network trained on the labelled rows, where a backdoor trigger stands out) or
    ``text`` (the rows' free-text columns joined, one string per row; it runs only where there is one).
    ``natural_threshold``: without a reference, flag scores above this value (a score with a meaning of
    its own, such as a majority of disagreeing neighbours); ``None``: a limit extrapolated from the tail of
    its scores (``poisonguard.decide.calibration.tail_limit``), or, with ``null_model``, the limit its own
    model of clean rows sets (``Detector.null_scores``, ``poisonguard.decide.calibration.model_limit``).
    ``explains``: what it says of a row it flagged, beside its score: ``label`` (the label it expected, from
    ``label_probabilities``) or ``features`` (the features that made the row unusual, from
    ``feature_outlyingness``); ``None``: its score alone.
    ``min_class_rows``: the fewest trusted reference rows every class needs for it to run (0: no minimum);
    below, ``auto`` leaves it out and a detector named on its own is skipped with the reason.
    ``auto``: the settings (``reference``, ``batch``) in which ``--detectors auto``, the default, runs it;
    a detector joins a setting when the development table (``python -m benchmarks.detection``) shows it
    adds recall there within the false-quarantine budget.
    ``auto_min_class_rows``: with a reference, ``auto`` runs it only when every class has at least this many
    trusted rows (0: no minimum); named on its own it runs whatever the reference's size. For a detector
    that adds recall on large references and, on small ones, mostly a member to the union's budget.
    """

    reason: str = "outlier"
    per_class: bool = True
    needs_labels: bool = False
    needs_reference: bool = False
    fitting: str = "inductive"
    reads: str = "features"
    natural_threshold: float | None = None
    null_model: bool = False
    auto: tuple[str, ...] = ()
    explains: str | None = None
    min_class_rows: int = 0
    auto_min_class_rows: int = 0

    def __post_init__(self) -> None:
        if not _REASON.fullmatch(self.reason):
            raise ValueError(f"reason must be lowercase letters, digits and '_', got {self.reason!r}")
        if self.fitting not in FITTING:
            raise ValueError(f"fitting must be one of {', '.join(FITTING)}, got {self.fitting!r}")
        if self.reads not in READS:
            raise ValueError(f"reads must be one of {', '.join(READS)}, got {self.reads!r}")
        if self.natural_threshold is not None and not math.isfinite(self.natural_threshold):
            raise ValueError(f"natural_threshold must be a finite number or None, got {self.natural_threshold!r}")
        if self.explains not in EXPLAINS:
            raise ValueError(f"explains must be one of {', '.join(map(str, EXPLAINS))}, got {self.explains!r}")
        unknown = sorted(set(self.auto) - set(AUTO_SETTINGS))
        if not isinstance(self.auto, tuple) or unknown:
            raise ValueError(f"auto must be a tuple of {', '.join(AUTO_SETTINGS)}, got {self.auto!r}")
        if self.null_model and self.natural_threshold is not None:
            raise ValueError("a detector with a natural_threshold keeps it; null_model would never be read")
        for field in ("min_class_rows", "auto_min_class_rows"):
            rows = getattr(self, field)
            if not isinstance(rows, int) or isinstance(rows, bool) or rows < 0:
                raise ValueError(f"{field} must be a whole number of rows, at least 0, got {rows!r}")
        for flag in ("per_class", "needs_labels", "needs_reference", "null_model"):
            if not isinstance(getattr(self, flag), bool):
                raise ValueError(f"{flag} must be True or False, got {getattr(self, flag)!r}")

    @property
    def transductive(self) -> bool:
        """Whether it judges rows against the rows it is fitted with (it then needs them all at once)."""
        return self.fitting != "inductive"

    @property
    def reads_rows_alone(self) -> bool:
        """Whether what it reads of a row depends on that row alone (not ``probe``, a network trained on the
        labelled rows), so an inductive one scores a batch chunk by chunk."""
        return self.reads != "probe"

    @property
    def scores_new_rows(self) -> bool:
        """Whether, once fitted, it can score rows it was not fitted on."""
        return self.fitting != "out_of_fold"
