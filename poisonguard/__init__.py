"""poisonguard: find poisoned rows in a training batch before they reach training."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("poisonguard")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

ROW_ID = "_row_id"
BATCH_ID = "_batch_id"
REASONS = "_reasons"
EXPLANATION = "_explanation"  # the reasons in words, beside the codes of a quarantined row
STATUS = "_status"
QUARANTINED_AT = "_quarantined_at"
RAW_VALUES = "_raw_values"
SCORE_PREFIX = "_score_"
PVALUE_PREFIX = "_pvalue_"
# A quarantined row's per-detector columns: ``_score_<detector>``, ``_pvalue_<detector>``, and what the detector
# said of the row (``_predicted_<detector>``, ``_probability_<detector>``, ``_features_<detector>``).
DETECTOR_COLUMN_PREFIXES = (SCORE_PREFIX, PVALUE_PREFIX, "_predicted_", "_probability_", "_features_")
# Columns poisonguard adds to its outputs; an input batch may not carry them.
RESERVED_COLUMNS = frozenset({ROW_ID, BATCH_ID, REASONS, EXPLANATION, STATUS, QUARANTINED_AT, RAW_VALUES})


def is_reserved_column(name: str) -> bool:
    """True when ``name`` would clash with a column poisonguard writes."""
    return name in RESERVED_COLUMNS or name.startswith(DETECTOR_COLUMN_PREFIXES)


def scan(data, *, label=None, reference=None, **settings):
    """Scan a DataFrame, an Arrow table or a batch file in this process: see :func:`poisonguard.api.scan`.

    Imported on first use, so that ``import poisonguard`` stays light for the CLI and review.
    """
    from poisonguard.api import scan as scan_in_process

    return scan_in_process(data, label=label, reference=reference, **settings)
