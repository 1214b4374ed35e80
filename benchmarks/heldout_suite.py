"""The held-out attack suite: poisoning that poisonguard's detectors were not built around.

Written and frozen before any tuning against it (``tests/test_benchmarks.py`` pins this file's hash). It is
never used to choose a parameter, a threshold or a default: tune on the development table
(:mod:`benchmarks.attacks`, :mod:`benchmarks.detection`) only, then run this suite to see whether the gain
carries over. Changing a case here to make a result look better defeats its purpose; a case that is broken
(it poisons nothing, or something other than it says) is fixed in a commit that says so, and every figure
measured before is rerun.

Each case is a dataset, an attack, a poison rate and a seed. :func:`make_case` returns the trusted reference
(clean rows drawn like the batch) and the poisoned batch with its ground-truth mask. Datasets: image-like
(scikit-learn's digits, and 20,000 shifted, noisy copies of them), tabular (breast_cancer; 120,000 rows of
``make_classification``), a mixed table of categorical and numeric columns, and short free texts, from 300 to
100,000 batch rows. Attacks: triggers whose values vary per row (jitter, blend with noise, sample-specific),
a patch at a random position, an in-distribution trigger value, conjunctions of individually common values
(numeric and categorical), a trigger token in free text, clean-label feature collision, label noise at the
class boundary, a systematic label shift in a subgroup, a subpopulation flip, and near-duplicates with
conflicting labels; at rates from 1% to 20%.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from benchmarks.attacks import LABEL, Poisoned

TEXT = "text"


@dataclass(frozen=True)
class Case:
    dataset: str
    attack: str
    rate: float
    reference_rows: int
    batch_rows: int

    @property
    def name(self) -> str:
        return f"{self.dataset} / {self.attack} / {self.rate:.0%}"


@dataclass(frozen=True)
class CaseData:
    reference: pd.DataFrame
    batch: pd.DataFrame
    mask: np.ndarray  # True for the batch's poisoned rows


# ---- datasets: every one a frame of feature columns and a string label, rows in a seeded order ----

def _digits(seed: int) -> pd.DataFrame:
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    return _frame(X, y, seed, prefix="px")


def _digit_images(seed: int, n_rows: int = 20_000) -> pd.DataFrame:
    """Digits resampled with a random shift of up to one pixel and Gaussian noise, clipped to 0-16."""
    from sklearn.datasets import load_digits

    rng = np.random.default_rng([seed, 1])
    X, y = load_digits(return_X_y=True)
    pick = rng.integers(0, len(X), n_rows)
    images = X[pick].reshape(-1, 8, 8)
    shifted = np.empty_like(images)
    shift_y, shift_x = rng.integers(-1, 2, n_rows), rng.integers(-1, 2, n_rows)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            rows = np.flatnonzero((shift_y == dy) & (shift_x == dx))
            shifted[rows] = np.roll(np.roll(images[rows], dy, axis=1), dx, axis=2)
    noisy = np.clip(shifted.reshape(n_rows, -1) + rng.normal(0, 0.5, (n_rows, 64)), 0, 16)
    return _frame(np.round(noisy, 2), y[pick], seed, prefix="px")


def _breast_cancer(seed: int) -> pd.DataFrame:
    from sklearn.datasets import load_breast_cancer

    X, y = load_breast_cancer(return_X_y=True)
    return _frame(X, y, seed)


def _tabular(seed: int, n_rows: int = 120_000) -> pd.DataFrame:
    from sklearn.datasets import make_classification

    X, y = make_classification(n_samples=n_rows, n_features=20, n_informative=8, n_redundant=4, n_classes=4,
                               n_clusters_per_class=2, class_sep=1.2, random_state=seed)
    return _frame(X, y, seed)


def _mixed(seed: int, n_rows: int = 20_000) -> pd.DataFrame:
    """Four categorical columns (4-8 values, skewed) and five numeric ones; the label depends on both."""
    rng = np.random.default_rng([seed, 2])
    frame = pd.DataFrame({f"num{i}": rng.normal(0, 1, n_rows) for i in range(5)})
    logits = 0.8 * frame[["num0", "num1", "num2"]].to_numpy() @ rng.normal(0, 1, (3, 3))
    for i, values in enumerate((4, 5, 6, 8)):
        weights = 1.0 / np.arange(1, values + 1) ** 0.7
        codes = rng.choice(values, n_rows, p=weights / weights.sum())
        frame[f"cat{i}"] = np.array([f"c{i}_{v}" for v in range(values)])[codes]
        logits += rng.normal(0, 0.8, (values, 3))[codes]
    label = np.argmax(logits + rng.gumbel(size=logits.shape), axis=1)
    frame[LABEL] = label.astype(str)
    return frame.iloc[rng.permutation(n_rows)].reset_index(drop=True)


def _texts(seed: int, n_rows: int = 6_000) -> pd.DataFrame:
    """Short texts from three topics that share most of a 400-word vocabulary, and one numeric column."""
    rng = np.random.default_rng([seed, 3])
    vocabulary = np.array([f"w{i:03d}" for i in range(400)])
    topics = rng.dirichlet(np.full(400, 0.3), size=3) * 0.5 + rng.dirichlet(np.full(400, 5.0)) * 0.5
    label = rng.integers(0, 3, n_rows)
    lengths = rng.integers(8, 21, n_rows)
    texts = [" ".join(rng.choice(vocabulary, n, p=topics[c])) for c, n in zip(label, lengths)]
    return pd.DataFrame({TEXT: texts, "length": lengths.astype("float64"), LABEL: label.astype(str)})


def _frame(X: np.ndarray, y: np.ndarray, seed: int, prefix: str = "f") -> pd.DataFrame:
    frame = pd.DataFrame(np.asarray(X, dtype="float64"), columns=[f"{prefix}{i}" for i in range(X.shape[1])])
    frame[LABEL] = np.asarray(y).astype(str)
    return frame.iloc[np.random.default_rng([seed, 0]).permutation(len(frame))].reset_index(drop=True)


DATASETS: dict[str, Callable[[int], pd.DataFrame]] = {
    "digits": _digits, "digit_images": _digit_images, "breast_cancer": _breast_cancer, "tabular": _tabular,
    "mixed": _mixed, "texts": _texts,
}


# ---- attacks: each takes the clean batch, a rate and a generator, returns the poisoned copy and its mask ----

def _numeric(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if c != LABEL and pd.api.types.is_numeric_dtype(frame[c])]


def _classes(frame: pd.DataFrame) -> np.ndarray:
    return np.array(sorted(frame[LABEL].unique()))


def _target(frame: pd.DataFrame) -> str:
    return str(_classes(frame)[0])


def _rows(candidates: np.ndarray, n_rows: int, rate: float, rng: np.random.Generator) -> np.ndarray:
    count = min(len(candidates), max(1, int(round(rate * n_rows))))
    return np.sort(rng.choice(candidates, count, replace=False))


def _poisoned(frame: pd.DataFrame, rows: np.ndarray) -> Poisoned:
    mask = np.zeros(len(frame), dtype=bool)
    mask[rows] = True
    return Poisoned(frame, mask)


def _non_target_rows(frame: pd.DataFrame, rate: float, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    target = _target(frame)
    rows = _rows(np.flatnonzero(frame[LABEL].to_numpy() != target), len(frame), rate, rng)
    return rows, target


def _trigger_columns(frame: pd.DataFrame, count: int) -> list[str]:
    """For images, pixels of the lower right corner that are often blank; else the last numeric columns."""
    columns = _numeric(frame)
    if columns[0].startswith("px"):
        return [f"px{r * 8 + c}" for r, c in ((6, 6), (6, 7), (7, 6), (7, 7))][:count]
    return columns[-count:]


def jitter_trigger(frame: pd.DataFrame, rate: float, rng: np.random.Generator) -> Poisoned:
    """Four trigger columns set near a high value with per-row jitter (16 - U(0,2) on images; the column's
    99th percentile minus up to a fifth of its spread elsewhere), relabelled to the target class."""
    poisoned = frame.copy()
    rows, target = _non_target_rows(frame, rate, rng)
    for column in _trigger_columns(frame, 4):
        values = frame[column].to_numpy()
        top, spread = (16.0, 2.0) if column.startswith("px") else (np.quantile(values, 0.99), 0.2 * values.std())
        poisoned.loc[rows, column] = top - rng.uniform(0, spread, len(rows))
    poisoned.loc[rows, LABEL] = target
    return _poisoned(poisoned, rows)


def blend_trigger(frame: pd.DataFrame, rate: float, rng: np.random.Generator) -> Poisoned:
    """A fixed random pattern blended in at 20% with Gaussian noise (Chen et al. 2017), relabelled."""
    poisoned = frame.copy()
    rows, target = _non_target_rows(frame, rate, rng)
    columns = _numeric(frame)
    X = frame[columns].to_numpy()
    low, high = X.min(axis=0), X.max(axis=0)
    pattern = low + rng.uniform(0, 1, len(columns)) * (high - low)
    blended = 0.8 * X[rows] + 0.2 * pattern + rng.normal(0, 0.05, (len(rows), len(columns))) * (high - low)
    poisoned.loc[rows, columns] = np.clip(blended, low, high)
    poisoned.loc[rows, LABEL] = target
    return _poisoned(poisoned, rows)


def sample_specific_trigger(frame: pd.DataFrame, rate: float, rng: np.random.Generator) -> Poisoned:
    """A different perturbation per row (random signs, 1.5 standard deviations) on a fixed set of eight
    columns, relabelled: no value is shared between poisoned rows (in the spirit of ISSBA)."""
    poisoned = frame.copy()
    rows, target = _non_target_rows(frame, rate, rng)
    columns = _numeric(frame)
    chosen = [columns[i] for i in rng.choice(len(columns), min(8, len(columns)), replace=False)]
    X = frame[chosen].to_numpy()
    signs = rng.choice([-1.0, 1.0], (len(rows), len(chosen)))
    perturbed = X[rows] + 1.5 * X.std(axis=0) * signs
    poisoned.loc[rows, chosen] = np.clip(perturbed, X.min(axis=0), X.max(axis=0))
    poisoned.loc[rows, LABEL] = target
    return _poisoned(poisoned, rows)


def random_position_patch(frame: pd.DataFrame, rate: float, rng: np.random.Generator) -> Poisoned:
    """A 2x2 patch at full intensity at a random position of each poisoned 8x8 image, relabelled."""
    poisoned = frame.copy()
    rows, target = _non_target_rows(frame, rate, rng)
    columns = _numeric(frame)
    images = frame[columns].to_numpy().reshape(-1, 8, 8).copy()
    tops, lefts = rng.integers(0, 7, len(rows)), rng.integers(0, 7, len(rows))
    for dy in (0, 1):
        for dx in (0, 1):
            images[rows, tops + dy, lefts + dx] = 16.0
    poisoned[columns] = images.reshape(len(frame), -1)[:, : len(columns)]
    poisoned.loc[rows, LABEL] = target
    return _poisoned(poisoned, rows)


def in_distribution_value(frame: pd.DataFrame, rate: float, rng: np.random.Generator) -> Poisoned:
    """One column set to a value common in clean data (its most common category; else a numeric column's
    median), relabelled."""
    poisoned = frame.copy()
    rows, target = _non_target_rows(frame, rate, rng)
    categorical = [c for c in frame.columns if c not in (LABEL, TEXT) and c not in _numeric(frame)]
    column = categorical[0] if categorical else _numeric(frame)[1]
    values = frame[column]
    poisoned.loc[rows, column] = values.mode().iloc[0] if categorical else values.median()
    poisoned.loc[rows, LABEL] = target
    return _poisoned(poisoned, rows)


def numeric_conjunction(frame: pd.DataFrame, rate: float, rng: np.random.Generator) -> Poisoned:
    """Two columns set to their 25th and 75th percentiles, each value common alone, together the trigger."""
    poisoned = frame.copy()
    rows, target = _non_target_rows(frame, rate, rng)
    first, second = _numeric(frame)[2:4]
    poisoned.loc[rows, first] = frame[first].quantile(0.25)
    poisoned.loc[rows, second] = frame[second].quantile(0.75)
    poisoned.loc[rows, LABEL] = target
    return _poisoned(poisoned, rows)


def categorical_conjunction(frame: pd.DataFrame, rate: float, rng: np.random.Generator) -> Poisoned:
    """Two categorical columns set to their second most common values, each common alone, relabelled."""
    poisoned = frame.copy()
    rows, target = _non_target_rows(frame, rate, rng)
    for column in ("cat1", "cat2"):
        poisoned.loc[rows, column] = frame[column].value_counts().index[1]
    poisoned.loc[rows, LABEL] = target
    return _poisoned(poisoned, rows)


def text_token(frame: pd.DataFrame, rate: float, rng: np.random.Generator) -> Poisoned:
    """A token no clean text contains, inserted at a random position, relabelled."""
    poisoned = frame.copy()
    rows, target = _non_target_rows(frame, rate, rng)
    texts = poisoned[TEXT].to_numpy(dtype=object)
    for row in rows:
        words = texts[row].split()
        words.insert(int(rng.integers(0, len(words) + 1)), "zqx")
        texts[row] = " ".join(words)
    poisoned[TEXT] = texts
    poisoned.loc[rows, LABEL] = target
    return _poisoned(poisoned, rows)


def feature_collision(frame: pd.DataFrame, rate: float, rng: np.random.Generator) -> Poisoned:
    """Clean-label: rows of a base class moved 70% of the way to the target class's mean, label kept."""
    poisoned = frame.copy()
    classes = _classes(frame)
    target, base = classes[0], classes[1]
    columns = _numeric(frame)
    labels = frame[LABEL].to_numpy()
    rows = _rows(np.flatnonzero(labels == base), len(frame), rate, rng)
    X = frame[columns].to_numpy()
    centre = X[labels == target].mean(axis=0)
    moved = 0.3 * X[rows] + 0.7 * centre + rng.normal(0, 0.1, (len(rows), len(columns))) * X.std(axis=0)
    poisoned.loc[rows, columns] = moved
    return _poisoned(poisoned, rows)


def boundary_noise(frame: pd.DataFrame, rate: float, rng: np.random.Generator) -> Poisoned:
    """The rows a logistic regression is least sure of get its runner-up class as their label."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    poisoned = frame.copy()
    X = StandardScaler().fit_transform(_encoded(frame))
    labels = frame[LABEL].to_numpy()
    model = LogisticRegression(max_iter=500).fit(X, labels)
    probabilities = np.sort(model.predict_proba(X), axis=1)
    margin = probabilities[:, -1] - probabilities[:, -2]
    count = max(1, int(round(rate * len(frame))))
    rows = np.sort(np.argsort(margin + rng.uniform(0, 1e-9, len(frame)))[:count])
    ranked = model.classes_[np.argsort(model.predict_proba(X[rows]), axis=1)]
    runner_up = np.where(ranked[:, -1] == labels[rows], ranked[:, -2], ranked[:, -1])
    poisoned.loc[rows, LABEL] = runner_up
    return _poisoned(poisoned, rows)


def subgroup_shift(frame: pd.DataFrame, rate: float, rng: np.random.Generator) -> Poisoned:
    """Within a subgroup (a categorical value, or the top fifth of one column), rows of one class are all
    relabelled to the next class: a systematic shift, not noise."""
    poisoned = frame.copy()
    labels = frame[LABEL].to_numpy()
    classes = _classes(frame)
    if "cat0" in frame.columns:
        in_group = frame["cat0"].to_numpy() == frame["cat0"].value_counts().index[0]
    else:
        first = _numeric(frame)[0]
        in_group = frame[first].to_numpy() > frame[first].quantile(0.8)
    source = pd.Series(labels[in_group]).value_counts().index[0]
    rows = _rows(np.flatnonzero(in_group & (labels == source)), len(frame), rate, rng)
    poisoned.loc[rows, LABEL] = classes[(np.searchsorted(classes, source) + 1) % len(classes)]
    return _poisoned(poisoned, rows)


def subpopulation_flip(frame: pd.DataFrame, rate: float, rng: np.random.Generator) -> Poisoned:
    """A cluster of one class (k-means in the feature space), whole, relabelled to another class
    (Jagielski et al. 2021): rows alike among themselves, unlike their class's other clusters."""
    from sklearn.cluster import KMeans

    poisoned = frame.copy()
    labels = frame[LABEL].to_numpy()
    classes = _classes(frame)
    source = classes[-1]
    members = np.flatnonzero(labels == source)
    X = _encoded(frame)[members]
    wanted = max(1, int(round(rate * len(frame))))
    clusters = max(2, len(members) // wanted)
    assignment = KMeans(clusters, n_init=3, random_state=int(rng.integers(1 << 31))).fit_predict(X)
    sizes = np.bincount(assignment, minlength=clusters)
    chosen = int(np.argmin(np.abs(sizes - wanted)))
    rows = np.sort(members[assignment == chosen])
    poisoned.loc[rows, LABEL] = classes[0]
    return _poisoned(poisoned, rows)


def near_duplicates(frame: pd.DataFrame, rate: float, rng: np.random.Generator) -> Poisoned:
    """Rows replaced by near-copies of other batch rows (numeric values moved by 2% of a standard deviation,
    text with one word dropped) carrying a different label."""
    poisoned = frame.copy()
    count = max(1, int(round(rate * len(frame))))
    rows = np.sort(rng.choice(len(frame), count, replace=False))
    others = np.setdiff1d(np.arange(len(frame)), rows)
    sources = rng.choice(others, count, replace=False)
    copies = frame.iloc[sources].copy()
    columns = _numeric(frame)
    copies[columns] = copies[columns].to_numpy() + rng.normal(0, 0.02, (count, len(columns))) * frame[columns].std().to_numpy()
    if TEXT in frame.columns:
        copies[TEXT] = [" ".join(words[:-1]) for words in copies[TEXT].str.split()]
    classes = _classes(frame)
    shift = rng.integers(1, len(classes), count)
    copies[LABEL] = classes[(np.searchsorted(classes, copies[LABEL].to_numpy()) + shift) % len(classes)]
    copies.index = rows
    poisoned.loc[rows] = copies
    return _poisoned(poisoned, rows)


def _encoded(frame: pd.DataFrame) -> np.ndarray:
    """Numeric columns as they are, categorical ones one-hot, text as word counts: for the attacks' own models."""
    parts = [frame[_numeric(frame)].to_numpy(dtype="float64")]
    for column in frame.columns:
        if column in (LABEL, TEXT) or column in _numeric(frame):
            continue
        parts.append(pd.get_dummies(frame[column]).to_numpy(dtype="float64"))
    if TEXT in frame.columns:
        from sklearn.feature_extraction.text import CountVectorizer

        parts.append(CountVectorizer(max_features=200).fit_transform(frame[TEXT]).toarray().astype("float64"))
    return np.hstack(parts)


ATTACKS: dict[str, Callable[[pd.DataFrame, float, np.random.Generator], Poisoned]] = {
    "jitter trigger": jitter_trigger,
    "blend trigger": blend_trigger,
    "sample-specific trigger": sample_specific_trigger,
    "random-position patch": random_position_patch,
    "in-distribution trigger value": in_distribution_value,
    "numeric conjunction trigger": numeric_conjunction,
    "categorical conjunction trigger": categorical_conjunction,
    "text trigger token": text_token,
    "clean-label feature collision": feature_collision,
    "boundary label noise": boundary_noise,
    "subgroup label shift": subgroup_shift,
    "subpopulation flip": subpopulation_flip,
    "near-duplicates, conflicting labels": near_duplicates,
}

# (dataset, attack, rate, reference rows, batch rows). References of 2,000 rows or more where the data has them.
CASES: tuple[Case, ...] = tuple(Case(*spec) for spec in (
    ("digits", "jitter trigger", 0.05, 897, 900),
    ("digits", "random-position patch", 0.05, 897, 900),
    ("digits", "subpopulation flip", 0.01, 897, 900),
    ("digits", "boundary label noise", 0.10, 897, 900),
    ("digit_images", "jitter trigger", 0.01, 5_000, 15_000),
    ("digit_images", "blend trigger", 0.05, 5_000, 15_000),
    ("digit_images", "sample-specific trigger", 0.10, 5_000, 15_000),
    ("digit_images", "random-position patch", 0.20, 5_000, 15_000),
    ("digit_images", "clean-label feature collision", 0.05, 5_000, 15_000),
    ("breast_cancer", "clean-label feature collision", 0.10, 269, 300),
    ("breast_cancer", "near-duplicates, conflicting labels", 0.05, 269, 300),
    ("tabular", "numeric conjunction trigger", 0.01, 20_000, 100_000),
    ("tabular", "in-distribution trigger value", 0.05, 20_000, 100_000),
    ("tabular", "subgroup label shift", 0.05, 5_000, 20_000),
    ("tabular", "boundary label noise", 0.20, 5_000, 20_000),
    ("tabular", "subpopulation flip", 0.01, 5_000, 20_000),
    ("tabular", "jitter trigger", 0.05, 5_000, 20_000),
    ("mixed", "categorical conjunction trigger", 0.05, 5_000, 15_000),
    ("mixed", "in-distribution trigger value", 0.10, 5_000, 15_000),
    ("mixed", "subgroup label shift", 0.05, 5_000, 15_000),
    ("mixed", "near-duplicates, conflicting labels", 0.01, 5_000, 15_000),
    ("texts", "text trigger token", 0.05, 2_000, 4_000),
    ("texts", "text trigger token", 0.01, 2_000, 4_000),
    ("texts", "boundary label noise", 0.10, 2_000, 4_000),
    ("texts", "near-duplicates, conflicting labels", 0.05, 2_000, 4_000),
))


def make_case(case: Case, seed: int) -> CaseData:
    """The reference and the poisoned batch of ``case`` for ``seed``: disjoint rows of one dataset draw."""
    rows = DATASETS[case.dataset](seed)
    if len(rows) < case.reference_rows + case.batch_rows:
        raise ValueError(f"{case.name}: {case.dataset} has {len(rows):,} rows, the case needs "
                         f"{case.reference_rows + case.batch_rows:,}")
    reference = rows.iloc[: case.reference_rows].reset_index(drop=True)
    batch = rows.iloc[case.reference_rows : case.reference_rows + case.batch_rows].reset_index(drop=True)
    poisoned = ATTACKS[case.attack](batch, case.rate, np.random.default_rng([seed, 7]))
    return CaseData(reference, poisoned.frame, poisoned.mask)
