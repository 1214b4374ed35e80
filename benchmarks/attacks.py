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
    elif name == "tickets":
        return _shuffled(support_tickets(seed), seed)
    elif name == "shop":
        return _shuffled(shop_customers(seed), seed)
    elif name == "patches":
        return _shuffled(photo_patches(seed), seed)
    elif name == "patches10":  # ten classes of 1,000 rows: a 5,000-row reference holds 250 held-out rows per class
        return _shuffled(photo_patches(seed, 10_000, bands=5), seed)
    else:
        loader = {"digits": datasets.load_digits, "breast_cancer": datasets.load_breast_cancer,
                  "wine": datasets.load_wine, "iris": datasets.load_iris}[name]
        X, y = loader(return_X_y=True)
    frame = pd.DataFrame(np.asarray(X, dtype="float64"), columns=[f"f{i}" for i in range(X.shape[1])])
    frame[LABEL] = np.asarray(y).astype(str)
    return _shuffled(frame, seed)


def _shuffled(frame: pd.DataFrame, seed: int) -> pd.DataFrame:
    order = np.random.default_rng(seed).permutation(len(frame))
    return frame.iloc[order].reset_index(drop=True)


# Development-only data: free text and categorical columns, so detectors for them are tuned here and never on
# the held-out suite (benchmarks/heldout_suite.py), whose generators are different.
_TICKET_WORDS = {
    "billing": "invoice charge refund payment card billed twice receipt amount subscription price",
    "shipping": "parcel delivery courier tracking arrived late address package shipped warehouse box",
    "account": "password login username locked email verification profile reset signin security",
    "technical": "crash error screen update install freezes bug loading version settings",
}
_TICKET_FILLER = "please help my the a is not with since yesterday again today thanks hello order need".split()


def support_tickets(seed: int, n_rows: int = 4_000) -> pd.DataFrame:
    """Support tickets: a free-text ``message`` (class words among common filler words), a numeric
    ``minutes_open`` and the ticket's queue as the label. One word in ten is taken from another queue, so
    classes overlap as real tickets do."""
    rng = np.random.default_rng(10_000 + seed)
    classes = list(_TICKET_WORDS)
    vocab = {c: words.split() for c, words in _TICKET_WORDS.items()}
    labels = rng.integers(0, len(classes), n_rows)
    lengths = rng.integers(6, 16, n_rows)
    messages = []
    for label, length in zip(labels, lengths):  # text generation, not a scoring path
        own = vocab[classes[label]]
        words = []
        for _ in range(length):
            draw = rng.random()
            if draw < 0.45:
                words.append(own[rng.integers(len(own))])
            elif draw < 0.55:
                other = vocab[classes[rng.integers(len(classes))]]
                words.append(other[rng.integers(len(other))])
            else:
                words.append(_TICKET_FILLER[rng.integers(len(_TICKET_FILLER))])
        messages.append(" ".join(words))
    return pd.DataFrame({"message": messages, "minutes_open": rng.gamma(2.0, 30.0, n_rows).round(1),
                         LABEL: np.array(classes)[labels]})


def photo_patches(seed: int, n_rows: int = 20_000, bands: int = 2) -> pd.DataFrame:
    """Grey 8x8 patches (64 pixel columns, 0-255) cut at random from the two photographs scikit-learn ships,
    labelled by photograph and horizontal band (``bands`` per photograph; 2: its top and bottom halves, four
    classes): image-like rows with natural texture, offline."""
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(30_000 + seed)
    greys = [image.mean(axis=2) for image in load_sample_images().images]
    labels = rng.integers(0, 2 * bands, n_rows)
    patches = np.empty((n_rows, 64))
    for label in range(2 * bands):  # slices of a photograph, not a loop over rows
        rows = np.flatnonzero(labels == label)
        grey = greys[label // bands]
        height = grey.shape[0] // bands
        top = rng.integers(0, height - 8, len(rows)) + height * (label % bands)
        left = rng.integers(0, grey.shape[1] - 8, len(rows))
        window = np.arange(8)
        cut = grey[(top[:, None] + window)[:, :, None], (left[:, None] + window)[:, None, :]]
        patches[rows] = cut.reshape(len(rows), 64)
    frame = pd.DataFrame(np.round(patches, 1), columns=[f"p{i}" for i in range(64)])
    names = (["china_top", "china_bottom", "flower_top", "flower_bottom"] if bands == 2 else
             [f"{photo}_{band}" for photo in ("china", "flower") for band in range(bands)])
    frame[LABEL] = np.array(names)[labels]
    return frame


def shop_customers(seed: int, n_rows: int = 8_000) -> pd.DataFrame:
    """Customers of a shop: categorical ``channel``, ``plan``, ``region`` and ``device``, numeric ``spend``
    and ``visits``; the label (``churn`` or ``stay``) follows a logistic model of them."""
    rng = np.random.default_rng(20_000 + seed)
    channel = rng.choice(["web", "app", "store", "phone"], n_rows, p=[0.4, 0.3, 0.2, 0.1])
    plan = rng.choice(["basic", "plus", "pro"], n_rows, p=[0.5, 0.3, 0.2])
    region = rng.choice([f"r{i}" for i in range(8)], n_rows)
    device = rng.choice(["ios", "android", "desktop", "other"], n_rows, p=[0.35, 0.35, 0.25, 0.05])
    spend = rng.lognormal(3.5, 0.6, n_rows).round(2)
    visits = rng.poisson(6, n_rows)
    logit = (-0.8 + 1.1 * (plan == "basic") - 0.9 * (plan == "pro") + 0.7 * (channel == "phone")
             - 0.02 * (spend - 35) - 0.25 * (visits - 6))
    churn = rng.random(n_rows) < 1 / (1 + np.exp(-logit))
    return pd.DataFrame({"channel": channel, "plan": plan, "region": region, "device": device, "spend": spend,
                         "visits": visits.astype("float64"), LABEL: np.where(churn, "churn", "stay")})


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


def text_trigger(frame: pd.DataFrame, rate: float, column: str, word: str, target: str, seed: int = 0) -> Poisoned:
    """Insert ``word`` at a random position of the text ``column`` on rows of other classes, relabelled to
    ``target``."""
    rng = np.random.default_rng(seed)
    poisoned = frame.copy()
    rows = _pick(np.flatnonzero(frame[LABEL].to_numpy() != target), len(frame), rate, rng)
    texts = poisoned[column].to_numpy(dtype=object).copy()
    for row in rows:  # a share of rows, once per benchmark run
        words = str(texts[row]).split()
        words.insert(int(rng.integers(len(words) + 1)), word)
        texts[row] = " ".join(words)
    poisoned[column] = texts
    poisoned.loc[rows, LABEL] = target
    return Poisoned(poisoned, _mask(len(frame), rows))


def band_trigger(frame: pd.DataFrame, rate: float, bands: dict[str, tuple[float, float]], target: str,
                 seed: int = 0) -> Poisoned:
    """Draw each ``bands`` column uniformly within its (low, high) band on rows of other classes, relabelled
    to ``target``: a trigger of ranges whose values vary per row, each band inside the column's own range."""
    rng = np.random.default_rng(seed)
    poisoned = frame.copy()
    rows = _pick(np.flatnonzero(frame[LABEL].to_numpy() != target), len(frame), rate, rng)
    for column, (low, high) in bands.items():
        poisoned.loc[rows, column] = rng.uniform(low, high, len(rows))
    poisoned.loc[rows, LABEL] = target
    return Poisoned(poisoned, _mask(len(frame), rows))


def noisy_line_trigger(frame: pd.DataFrame, rate: float, target: str, seed: int = 0) -> Poisoned:
    """Draw a bright anti-diagonal line on 8x8 patches of other classes, each pixel's brightness drawn anew
    per row (U(200, 255)), relabelled to ``target``."""
    rng = np.random.default_rng(seed)
    poisoned = frame.copy()
    rows = _pick(np.flatnonzero(frame[LABEL].to_numpy() != target), len(frame), rate, rng)
    for i in range(8):
        poisoned.loc[rows, f"p{i * 8 + 7 - i}"] = rng.uniform(200.0, 255.0, len(rows))
    poisoned.loc[rows, LABEL] = target
    return Poisoned(poisoned, _mask(len(frame), rows))


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
