"""Poisoning attacks on a labelled frame, deterministic with a seed; reusable by tests and benchmarks.

Each attack takes a frame (feature columns plus a label column), returns the poisoned copy and the
ground-truth mask of poisoned rows, and never touches the input. Datasets are the ones scikit-learn
ships, so nothing is downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

LABEL = "label"


@dataclass(frozen=True)
class Poisoned:
    frame: pd.DataFrame
    mask: np.ndarray  # True for poisoned rows


def load_dataset(name: str, seed: int = 0) -> pd.DataFrame:
    """A scikit-learn dataset as a frame of float features and a string ``label`` column, rows shuffled."""
    from sklearn import datasets

    if name == "synthetic":
        X, y = datasets.make_classification(n_samples=20_000, n_features=20, n_informative=10, n_classes=3,
                                            random_state=seed)
    else:
        loader = {"digits": datasets.load_digits, "breast_cancer": datasets.load_breast_cancer,
                  "wine": datasets.load_wine, "iris": datasets.load_iris}[name]
        X, y = loader(return_X_y=True)
    frame = pd.DataFrame(np.asarray(X, dtype="float64"), columns=[f"f{i}" for i in range(X.shape[1])])
    frame[LABEL] = np.asarray(y).astype(str)
    order = np.random.default_rng(seed).permutation(len(frame))
    return frame.iloc[order].reset_index(drop=True)


def _pick(candidates: np.ndarray, n_rows: int, rate: float, rng: np.random.Generator) -> np.ndarray:
    count = min(len(candidates), max(1, int(round(rate * n_rows))))
    return rng.choice(candidates, count, replace=False)


def _mask(n_rows: int, rows: np.ndarray) -> np.ndarray:
    mask = np.zeros(n_rows, dtype=bool)
    mask[rows] = True
    return mask


def random_flips(frame: pd.DataFrame, rate: float, seed: int = 0) -> Poisoned:
    """Relabel a share ``rate`` of rows to a different class chosen at random."""
    rng = np.random.default_rng(seed)
    poisoned = frame.copy()
    rows = _pick(np.arange(len(frame)), len(frame), rate, rng)
    classes = np.array(sorted(frame[LABEL].unique()))
    current = np.searchsorted(classes, poisoned.loc[rows, LABEL].to_numpy())
    shift = rng.integers(1, len(classes), size=len(rows))
    poisoned.loc[rows, LABEL] = classes[(current + shift) % len(classes)]
    return Poisoned(poisoned, _mask(len(frame), rows))


def targeted_flips(frame: pd.DataFrame, rate: float, source: str, target: str, seed: int = 0) -> Poisoned:
    """Relabel rows of class ``source`` to ``target``: ``rate`` of all rows (or every source row)."""
    rng = np.random.default_rng(seed)
    poisoned = frame.copy()
    rows = _pick(np.flatnonzero(frame[LABEL].to_numpy() == source), len(frame), rate, rng)
    poisoned.loc[rows, LABEL] = target
    return Poisoned(poisoned, _mask(len(frame), rows))


def backdoor(frame: pd.DataFrame, rate: float, trigger: dict[str, float], target: str, seed: int = 0,
             relabel: bool = True) -> Poisoned:
    """BadNets-style: set the ``trigger`` columns to fixed values on rows of other classes and relabel them
    to ``target``; with ``relabel=False`` (clean-label style) the trigger goes on ``target`` rows instead."""
    rng = np.random.default_rng(seed)
    poisoned = frame.copy()
    is_target = frame[LABEL].to_numpy() == target
    rows = _pick(np.flatnonzero(~is_target if relabel else is_target), len(frame), rate, rng)
    for column, value in trigger.items():
        poisoned.loc[rows, column] = value
    if relabel:
        poisoned.loc[rows, LABEL] = target
    return Poisoned(poisoned, _mask(len(frame), rows))


def digits_corner_trigger() -> dict[str, float]:
    """A 2x2 patch at full intensity in the bottom-right corner of the 8x8 digit images."""
    return {f"f{row * 8 + col}": 16.0 for row in (6, 7) for col in (6, 7)}


def outliers(frame: pd.DataFrame, rate: float, seed: int = 0, scale: float = 6.0) -> Poisoned:
    """Replace rows by points ``scale`` standard deviations out along a random direction per row."""
    rng = np.random.default_rng(seed)
    poisoned = frame.copy()
    rows = _pick(np.arange(len(frame)), len(frame), rate, rng)
    features = [c for c in frame.columns if c != LABEL]
    values = frame[features].to_numpy(dtype="float64")
    direction = rng.normal(size=(len(rows), len(features)))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    spread = values.std(axis=0) * np.sqrt(len(features))
    poisoned.loc[rows, features] = values.mean(axis=0) + scale * direction * spread
    return Poisoned(poisoned, _mask(len(frame), rows))


def duplicate_replay(frame: pd.DataFrame, rate: float, seed: int = 0) -> Poisoned:
    """Append copies of existing rows with a different label (the copies are the poison)."""
    rng = np.random.default_rng(seed)
    rows = _pick(np.arange(len(frame)), len(frame), rate, rng)
    copies = frame.iloc[rows].copy()
    classes = np.array(sorted(frame[LABEL].unique()))
    current = np.searchsorted(classes, copies[LABEL].to_numpy())
    copies[LABEL] = classes[(current + rng.integers(1, len(classes), size=len(rows))) % len(classes)]
    poisoned = pd.concat([frame, copies], ignore_index=True)
    return Poisoned(poisoned, np.r_[np.zeros(len(frame), bool), np.ones(len(copies), bool)])


def schema_breaking(frame: pd.DataFrame, rate: float, seed: int = 0) -> Poisoned:
    """Blank a feature or push it far outside its range on a share ``rate`` of rows."""
    rng = np.random.default_rng(seed)
    poisoned = frame.copy()
    rows = _pick(np.arange(len(frame)), len(frame), rate, rng)
    features = [c for c in frame.columns if c != LABEL]
    columns = rng.choice(features, size=len(rows))
    for kind, (row, column) in enumerate(zip(rows, columns)):  # a handful of cells, not a hot path
        high = frame[column].max()
        poisoned.loc[row, column] = np.nan if kind % 2 == 0 else high + 100 * (abs(high) + 1)
    return Poisoned(poisoned, _mask(len(frame), rows))
