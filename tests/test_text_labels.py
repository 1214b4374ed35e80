"""Labels decided by words: models of the label read a free-text column's full TF-IDF, and a word that names
its class is not taken for a trigger."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import sparse

from poisonguard.config import ScanConfig
from poisonguard.featurize.features import FeatureEncoder, infer_kinds
from poisonguard.score.rows import score_rows

CLASSES = ("a", "b", "c")


def keyword_tickets(n_rows: int, seed: int) -> pd.DataFrame:
    """Each row: eight of 300 filler words and one of its class's 30 keywords, which alone decides the label.

    16 SVD dimensions cannot hold 90 keywords of 1% of the rows each: a label model on them is at chance."""
    rng = np.random.default_rng(seed)
    filler = np.array([f"w{i}" for i in range(300)])
    label = rng.choice(CLASSES, n_rows)
    text = [" ".join([*rng.choice(filler, 8), f"{c}key{rng.integers(30)}"]) for c in label]
    frame = pd.DataFrame({"message": text, "size": rng.normal(size=n_rows), "label": label})
    frame.insert(0, "_row_id", np.arange(n_rows))
    return frame


def flipped(frame: pd.DataFrame, share: float, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    rows = np.random.default_rng(seed).choice(len(frame), int(share * len(frame)), replace=False)
    frame = frame.copy()
    frame.loc[rows, "label"] = frame.loc[rows, "label"].map({"a": "b", "b": "c", "c": "a"})
    return frame, np.isin(np.arange(len(frame)), rows)


def test_the_words_view_is_the_full_tfidf_beside_the_other_columns_and_the_features_without_text():
    frame = keyword_tickets(500, 0)
    encoder = FeatureEncoder(infer_kinds(frame, "label"), "label").fit(frame)
    X, words = encoder.transform(frame), encoder.words(frame)
    assert sparse.issparse(words) and words.shape[0] == len(frame)
    vocabulary = len(encoder.transformer_.named_transformers_["text:message"].vectorizer_.vocabulary_)
    assert words.shape[1] == X.shape[1] - 16 + vocabulary  # the 16 SVD dimensions give way to every word
    np.testing.assert_allclose(words[:, 0].toarray().ravel(), X[:, 0])  # "size", encoded as before
    numbers = frame.drop(columns="message")
    plain = FeatureEncoder(infer_kinds(numbers, "label"), "label").fit(numbers)
    assert plain.words(numbers) is not None and not sparse.issparse(plain.words(numbers))


@pytest.mark.parametrize("seed", [0, 1])
def test_with_a_reference_the_label_model_reads_the_words_that_decide_a_label(seed):
    reference = keyword_tickets(2_000, seed)
    batch, poisoned = flipped(keyword_tickets(2_000, 100 + seed), 0.05, seed)
    config = ScanConfig(label_col="label", seed=seed)
    result = score_rows(batch, reference, infer_kinds(batch, "label"), "label", config)
    found = result.flags["label_model"]
    assert found[poisoned].mean() >= 0.9  # 0.99-1.00; on the SVD dimensions 0.00-0.03 at 1% false positives
    flagged = np.column_stack(list(result.flags.values())).any(axis=1)
    assert flagged[~poisoned].mean() <= 0.01


def keyword_codes(n_rows: int, seed: int) -> pd.DataFrame:
    """The table form of :func:`keyword_tickets`: a ``product`` code, one of 30 per class, decides the label;
    four numeric columns say nothing of it."""
    rng = np.random.default_rng(seed)
    label = rng.choice(CLASSES, n_rows)
    frame = pd.DataFrame(rng.normal(size=(n_rows, 4)), columns=[f"x{i}" for i in range(4)])
    frame["product"] = [f"{c}{rng.integers(30)}" for c in label]
    frame["label"] = label
    frame.insert(0, "_row_id", np.arange(n_rows))
    return frame


@pytest.mark.parametrize("make", [keyword_tickets, keyword_codes], ids=["word", "code"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_without_a_reference_a_word_or_code_that_names_its_class_is_no_trigger(make, seed):
    batch, poisoned = flipped(make(2_000, 100 + seed), 0.05, seed)
    config = ScanConfig(label_col="label", seed=seed)
    result = score_rows(batch, None, infer_kinds(batch, "label"), "label", config)
    flagged = np.column_stack(list(result.flags.values())).any(axis=1)
    # Each keyword or code is label-pure; judged without it, its rows' other columns say nothing, which is no
    # contradiction. Before: the trigger checks quarantined 32% of the clean rows.
    assert not result.flags.get("trigger_tokens", np.zeros(1, bool)).any()
    assert not result.flags.get("trigger_values", np.zeros(1, bool)).any()
    assert flagged[~poisoned].mean() <= 0.02


def test_a_small_reference_cross_fitted_scores_free_text_with_a_whole_batch_detector():
    """A reference too small to hold rows out is cross-fitted, its fit part empty: a detector that reads the
    words and judges the whole batch (label_oof) still runs, where the empty TF-IDF once raised."""
    reference, batch = keyword_tickets(300, 1), keyword_tickets(400, 2)
    kinds = infer_kinds(batch, "label")
    config = ScanConfig(label_col="label").with_overrides(detection={"detectors": ("label_oof",)})
    scores = score_rows(batch, reference, kinds, "label", config)
    assert scores.calibration["skipped_detectors"] == {}
    assert len(scores.scores["label_oof"]) == len(batch)
