"""The one rule for dataset names, wherever a name comes from, and the names of what poisonguard offers: light,
so that every module (and the command line's help) may import it."""

from __future__ import annotations

import difflib
import unicodedata

from poisonguard.errors import ConfigError

# Batch file formats poisonguard reads.
FORMATS = ("csv", "parquet", "jsonl")
# The detector names the registry ships with, for the command line's help without importing the detectors
# (scikit-learn costs 1.5 s); tests/test_cli.py keeps it equal to the registry.
BUILT_IN_DETECTORS = ("activation_clustering", "confident_learning", "duplicates", "ecod", "iforest", "knn",
                      "knn_label", "label_model", "label_oof", "label_trees", "robust_spectral", "spectral",
                      "trigger_tokens", "trigger_values")


def dataset_name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a dataset, or ``None``.

    A dataset name becomes a folder under each output area (``clean/<dataset>/``), so it must be one plain,
    visible path component: a name such as ``..`` (from a file called ``...csv``) once put the clean and the
    quarantine files of a batch at one path, and the second write replaced the first. The same rule holds
    wherever a name comes from: ``--dataset``, a manifest, a file name, the inbox.
    """
    if not name or not name.strip():
        return "it is empty"
    if len(name) > 128:
        return "it is longer than 128 characters"
    if name != name.strip():
        return "it starts or ends with white space"
    if any(character in name for character in "/\\") or name in (".", "..") or name.startswith("."):
        return "it must be one plain folder name (no '/', '\\' or leading '.')"
    if any(unicodedata.category(character)[0] == "C" for character in name):
        return "it holds a control or unprintable character"
    return None


def checked_dataset_name(name: str, origin: str) -> str:
    """``name`` when it can name a dataset (see :func:`dataset_name_problem`); else :class:`ConfigError`
    saying where the name came from (``origin``: "--dataset", "the file name x.csv") and what to do."""
    problem = dataset_name_problem(name)
    if problem is not None:
        raise ConfigError(f"dataset {name!r} cannot be used (from {origin}): {problem}; pass --dataset NAME")
    return name


def closest_name(name: str, choices: list[str]) -> str | None:
    """The choice closest to a mistyped ``name`` (difflib's ratio of at least 0.6), or ``None``."""
    close = difflib.get_close_matches(name, [str(c) for c in choices], n=1)
    return close[0] if close else None


def column_not_found(where: object, role: str, column: str, columns: list[str]) -> str:
    """``"<where>: <role> column 'x' not found; did you mean 'y'? (columns: ...)"``, the closest name when one is."""
    close = closest_name(column, columns)
    hint = f"; did you mean {close!r}?" if close else ""
    return f"{where}: {role} column {column!r} not found{hint} (columns: {', '.join(map(str, columns))})"


def is_url(location: object) -> bool:
    """Whether ``location`` names object storage (``scheme://...``, fsspec) rather than a local path;
    ``file://`` is a local path."""
    return "://" in str(location) and not str(location).startswith("file://")
