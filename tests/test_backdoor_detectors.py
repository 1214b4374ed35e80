"""Backdoor and label-poisoning detectors: each must rank the poison it is built for above clean rows."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import make_frame

from poisonguard import ROW_ID
from poisonguard.config import ScanConfig
from poisonguard.decide.calibration import model_false_quarantine, model_limit
from poisonguard.detectors import REGISTRY, ClassConditional, make_detector
from poisonguard.detectors.near_duplicates import MAX_SCORE
from poisonguard.flows.scan import run_scan
from poisonguard.score.rows import score_rows
from poisonguard.write.outputs import OutputPaths

BACKDOOR_DETECTORS = ["spectral", "activation_clustering", "robust_spectral"]
LABEL_DETECTORS = ["confident_learning", "knn_label"]


def class_with_trigger_cluster(seed: int = 0, n_rows: int = 400, n_poison: int = 30):
    """One class's representations: a clean Gaussian plus a small cluster sharing a trigger direction."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n_rows, 20))
    poison = rng.choice(n_rows, n_poison, replace=False)
    X[poison, :4] += 3.0
    mask = np.zeros(n_rows, dtype=bool)
    mask[poison] = True
    return X, mask


def precision_at_k(scores: np.ndarray, mask: np.ndarray) -> float:
    top = np.argsort(-scores, kind="stable")[: mask.sum()]
    return float(mask[top].mean())


@pytest.mark.parametrize("name", BACKDOOR_DETECTORS)
def test_backdoor_detectors_rank_a_planted_trigger_cluster_first(name):
    X, mask = class_with_trigger_cluster()
    scores = make_detector(name, seed=0).fit_decision_function(X)
    assert scores.shape == (len(X),) and np.isfinite(scores).all()
    assert precision_at_k(scores, mask) >= 0.9


def test_activation_clustering_calls_the_split_clear_only_when_there_is_a_cluster():
    X, _ = class_with_trigger_cluster(n_poison=40)
    assert make_detector("activation_clustering", seed=0).fit(X).clear_split_
    clean = np.random.default_rng(3).normal(size=(400, 20))
    assert not make_detector("activation_clustering", seed=0).fit(clean).clear_split_


def separable_classes_with_flips(seed: int = 0, n_rows: int = 400, n_flipped: int = 20):
    rng = np.random.default_rng(seed)
    y = rng.choice(["cat", "dog"], size=n_rows).astype(object)
    X = rng.normal(size=(n_rows, 5)) + np.where(y == "cat", 2.5, -2.5)[:, None]
    flipped = rng.choice(n_rows, n_flipped, replace=False)
    y[flipped] = np.where(y[flipped] == "cat", "dog", "cat")
    mask = np.zeros(n_rows, dtype=bool)
    mask[flipped] = True
    return X, y, mask


@pytest.mark.parametrize("name", LABEL_DETECTORS)
def test_label_detectors_rank_flipped_labels_first(name):
    X, y, mask = separable_classes_with_flips()
    scores = make_detector(name, seed=0).fit_decision_function(X, y)
    assert scores.shape == (len(X),) and np.isfinite(scores).all()
    assert precision_at_k(scores, mask) >= 0.9


def test_confident_learning_scores_are_positive_exactly_for_its_label_issues():
    X, y, mask = separable_classes_with_flips(seed=1)
    scores = make_detector("confident_learning", seed=0).fit_decision_function(X, y)
    issues = scores > 0
    assert mask[issues].mean() >= 0.9 and issues[mask].mean() >= 0.75


def classes_with_near_copies(seed: int, n_rows: int = 600, n_copies: int = 30, noise: float = 0.01):
    """Three Gaussian classes in 8 dimensions; ``n_copies`` rows replaced by near-copies of other rows (each
    value moved by ``noise`` standard deviations) carrying another label. Returns X, labels, the copies'
    mask and their sources' positions."""
    rng = np.random.default_rng(seed)
    y = rng.choice(["a", "b", "c"], size=n_rows).astype(object)
    centres = {"a": 0.0, "b": 3.0, "c": 6.0}
    X = rng.normal(size=(n_rows, 8)) + np.array([centres[v] for v in y])[:, None]
    copies = np.sort(rng.choice(n_rows, n_copies, replace=False))  # in row order, as np.flatnonzero(mask)
    sources = rng.choice(np.setdiff1d(np.arange(n_rows), copies), n_copies, replace=False)
    X[copies] = X[sources] + rng.normal(0, noise, (n_copies, 8))
    y[copies] = np.array([{"a": "b", "b": "c", "c": "a"}[v] for v in y[sources]], dtype=object)
    mask = np.zeros(n_rows, dtype=bool)
    mask[copies] = True
    return X, y, mask, sources


LEVEL = 0.005  # a detector's share of the no-reference budget: clean rows pass -log(LEVEL) at most this often


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_near_copies_with_another_label_are_flagged_and_their_sources_are_not(seed):
    X, y, mask, sources = classes_with_near_copies(seed)
    scores = make_detector("duplicates").fit_decision_function(X, y)
    flagged = scores > -np.log(LEVEL)
    assert flagged[mask].mean() >= 0.9
    assert flagged[sources].mean() <= 0.05  # the neighbourhood tells the relabelled copy from its source
    assert np.delete(flagged, np.r_[np.flatnonzero(mask), sources]).mean() <= LEVEL


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_duplicates_null_limit_holds_on_clean_overlapping_classes(seed):
    """Clean rows of classes that overlap (neighbours with other labels everywhere) pass the limit its own
    model sets at most at its level."""
    rng = np.random.default_rng(seed)
    y = rng.choice(["a", "b"], size=3000).astype(object)
    X = rng.normal(size=(3000, 6)) + 1.5 * (y == "b")[:, None]
    detector = make_detector("duplicates")
    scores = detector.fit_decision_function(X, y)
    limit = model_limit(*detector.null_scores(), LEVEL)
    assert limit == pytest.approx(-np.log(LEVEL), rel=0.01)
    assert (scores > limit).mean() <= LEVEL
    # The interval a report gives is what the dimension's estimate leaves unknown: it has a width.
    share, low, high = model_false_quarantine(*detector.null_scores(), limit, seed, replicates=True)
    assert share == pytest.approx(LEVEL, rel=0.01) and low < 0.95 * share and high > 1.05 * share


def test_exact_copies_with_another_label_score_highest_and_consistent_copies_score_zero():
    X, y, _, _ = classes_with_near_copies(0, n_copies=0)
    X = np.vstack([X, X[:5], X[5:10]])  # 5 copies with the other label, 5 with the same label
    y = np.concatenate([y, [{"a": "b", "b": "c", "c": "a"}[v] for v in y[:5]], y[5:10]]).astype(object)
    scores = make_detector("duplicates").fit_decision_function(X, y)
    assert (scores[600:605] == MAX_SCORE).all()
    assert (scores[605:] == 0.0).all() and (scores[5:10] == 0.0).all()


def test_duplicates_judges_new_rows_against_the_rows_it_was_fitted_on():
    X, y, _, _ = classes_with_near_copies(1, n_copies=0)
    detector = make_detector("duplicates").fit(X, y)
    new = X[:20] + 0.001
    relabelled = np.array([{"a": "b", "b": "c", "c": "a"}[v] for v in y[:20]], dtype=object)
    assert (detector.decision_function(new, relabelled) > -np.log(LEVEL)).mean() >= 0.9
    assert (detector.decision_function(new, y[:20]) == 0.0).all()


def test_duplicates_above_max_fit_rows_judges_the_rest_against_a_sample():
    X, y, mask, sources = classes_with_near_copies(2, n_rows=1200, n_copies=60)
    detector = make_detector("duplicates", seed=0, max_fit_rows=600)
    flagged = detector.fit_decision_function(X, y) > -np.log(LEVEL)
    sampled = np.isin(sources, detector.fitted_rows_)  # a copy is found where its source was sampled
    assert len(detector.fitted_rows_) == 600 and 0 < sampled.sum() < len(sources)
    assert flagged[np.flatnonzero(mask)[sampled]].mean() >= 0.9


def test_duplicates_refuses_labels_its_neighbourhoods_cannot_predict():
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(500, 5)), rng.choice(["a", "b"], size=500).astype(object)
    with pytest.raises(ValueError, match="balanced accuracy .* below min_accuracy"):
        make_detector("duplicates").fit_decision_function(X, y)


def triggered_rows_relabelled(seed: int = 0, n_rows: int = 600, share: float = 0.1, corner_columns: int = 2,
                              set_per_row: int | None = None):
    """Three classes told apart by five ordinary columns, integer-valued like pixels, plus ``corner_columns``
    columns that are almost always 0. ``share`` of the rows, taken from classes b and c, get the trigger
    (every corner column set to 9, or ``set_per_row`` of them drawn per row) and the label a: with the
    defaults, half of class a is then poison."""
    rng = np.random.default_rng(seed)
    y = rng.choice(["a", "b", "c"], size=n_rows).astype(object)
    centres = {"a": 0.0, "b": 6.0, "c": 12.0}
    body = np.rint(rng.normal(size=(n_rows, 5)) * 1.5 + np.array([centres[v] for v in y])[:, None])
    corner = np.where(rng.random((n_rows, corner_columns)) < 0.02, 1.0, 0.0)
    poison = rng.choice(np.flatnonzero(y != "a"), int(share * n_rows), replace=False)
    if set_per_row is None:
        corner[poison] = 9.0
    else:
        for row in poison:
            corner[row, rng.choice(corner_columns, set_per_row, replace=False)] = 9.0
    y[poison] = "a"
    mask = np.zeros(n_rows, dtype=bool)
    mask[poison] = True
    return np.hstack([body, corner]), y, mask


def test_trigger_values_find_relabelled_triggered_rows_that_are_half_their_class():
    X, y, mask = triggered_rows_relabelled()
    detector = make_detector("trigger_values", seed=0)
    scores = detector.fit_decision_function(X, y)
    assert scores.shape == (len(X),) and np.isfinite(scores).all()
    assert {(columns, label) for columns, pairs in detector.candidates_.items() for _, label in pairs} >= {((5,), "a"), ((6,), "a")}
    assert (scores[mask] > detector.spec.natural_threshold).mean() >= 0.95
    assert (scores[~mask] > detector.spec.natural_threshold).mean() <= 0.01
    np.testing.assert_array_equal(scores, make_detector("trigger_values", seed=0).fit_decision_function(X, y))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_trigger_values_find_a_trigger_whose_columns_vary_per_row(seed):
    # Each column's judge must not learn the trigger from the poisoned rows that hold it in other columns.
    X, y, mask = triggered_rows_relabelled(seed, n_rows=1_500, corner_columns=8, set_per_row=4)
    detector = make_detector("trigger_values", seed=0)
    flagged = detector.fit_decision_function(X, y) > detector.spec.natural_threshold
    assert flagged[mask].mean() >= 0.9
    assert flagged[~mask].mean() <= 0.01


def test_trigger_values_leave_a_value_that_predicts_the_label_like_the_other_columns_do():
    rng = np.random.default_rng(1)
    y = rng.choice(["low", "high"], size=500).astype(object)
    signal = np.where(y == "high", 3.0, -3.0)
    X = np.column_stack([rng.normal(size=(500, 3)) + signal[:, None],
                         np.where(y == "high", 1.0, rng.choice([0.0, 1.0], size=500))])
    scores = make_detector("trigger_values", seed=0).fit_decision_function(X, y)
    assert (scores <= 0.5).all()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_trigger_values_find_a_conjunction_of_two_common_categorical_values(seed):
    from benchmarks.attacks import backdoor, shop_customers
    from poisonguard.featurize.features import FeatureEncoder, infer_kinds

    poisoned = backdoor(shop_customers(seed, 4_000), 0.05, {"channel": "phone", "plan": "pro"}, "churn", seed)
    frame, mask = poisoned.frame, poisoned.mask
    X = FeatureEncoder(infer_kinds(frame, "label"), "label").fit(frame).transform(frame)
    y = frame["label"].to_numpy(dtype=object)
    detector = make_detector("trigger_values", seed=0)
    scores = detector.fit_decision_function(X, y)
    assert any(len(columns) == 2 for columns in detector.candidates_)  # neither value is label-pure alone
    flagged = scores > detector.spec.natural_threshold
    assert flagged[mask].mean() >= 0.8
    assert flagged[~mask].mean() <= 0.01


def test_trigger_values_need_labels_and_rows():
    with pytest.raises(ValueError, match="trigger_values needs the label column"):
        make_detector("trigger_values").fit(np.zeros((50, 3)))
    with pytest.raises(ValueError, match="trigger_values: needs at least 10 rows"):
        make_detector("trigger_values").fit(np.zeros((4, 3)), np.array(["a", "b", "a", "b"], dtype=object))


def tickets_with_trigger_word(seed: int, n_rows: int = 2_000, share: float = 0.05):
    """Support tickets (free text) with ``share`` of the rows given the word ``asap`` and relabelled billing."""
    from benchmarks.attacks import support_tickets, text_trigger

    poisoned = text_trigger(support_tickets(seed, n_rows), share, "message", "asap", "billing", seed)
    return poisoned.frame.rename(columns={"label": "queue"}), poisoned.mask


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_trigger_tokens_find_a_trigger_word_and_leave_the_words_that_name_a_class(seed):
    frame, mask = tickets_with_trigger_word(seed)
    detector = make_detector("trigger_tokens", seed=0)
    scores = detector.fit_decision_function(frame["message"].to_numpy(dtype=object), frame["queue"].to_numpy(dtype=object))
    assert scores.shape == (len(frame),) and np.isfinite(scores).all()
    assert set(detector.tokens_) == {"asap"}  # "invoice", "refund"... are label-pure too, and agree with their rows
    assert (scores[mask] > detector.spec.natural_threshold).mean() >= 0.9
    assert (scores[~mask] > detector.spec.natural_threshold).mean() <= 0.01


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_default_scan_finds_a_trigger_word_with_and_without_a_reference(seed):
    from benchmarks.attacks import support_tickets

    batch, mask = tickets_with_trigger_word(seed)
    batch.insert(0, ROW_ID, np.arange(len(batch)))
    reference = support_tickets(100 + seed, 3_000).rename(columns={"label": "queue"})
    kinds = {"message": "text", "minutes_open": "numeric"}
    for given in (reference, None):
        scores = score_rows(batch, given, kinds, "queue", ScanConfig(label_col="queue", seed=seed))
        assert "trigger_tokens" in scores.flags
        quarantined = np.logical_or.reduce(list(scores.flags.values()))
        assert quarantined[mask].mean() >= 0.9, "reference" if given is not None else "batch only"
        assert quarantined[~mask].mean() <= (0.01 if given is not None else 0.02)


def test_the_default_scan_finds_a_categorical_conjunction_trigger_with_and_without_a_reference():
    """The trigger's rows share ``channel = phone`` and ``plan = pro`` with the few customers of that pair who
    churn anyway, so the reference's held-out rows cannot rank them apart: the detector's own threshold
    flags the group when the held-out rows show that it is affordable (in most seeds: 0.5-0.65% of them)."""
    from benchmarks.attacks import backdoor, shop_customers

    kinds = {"channel": "categorical", "plan": "categorical", "region": "categorical", "device": "categorical",
             "spend": "numeric", "visits": "numeric"}
    recall = {"reference": [], "batch only": []}
    false_quarantine = {"reference": [], "batch only": []}
    for seed in range(4):
        poisoned = backdoor(shop_customers(seed, 4_000), 0.05, {"channel": "phone", "plan": "pro"}, "churn", seed)
        batch = poisoned.frame.assign(**{ROW_ID: np.arange(4_000)})
        for setting, reference in (("reference", shop_customers(100 + seed, 4_000)), ("batch only", None)):
            scores = score_rows(batch, reference, kinds, "label", ScanConfig(label_col="label", seed=seed))
            quarantined = np.logical_or.reduce(list(scores.flags.values()))
            recall[setting].append(quarantined[poisoned.mask].mean())
            false_quarantine[setting].append(quarantined[~poisoned.mask].mean())
    assert np.median(recall["reference"]) >= 0.8 and np.median(recall["batch only"]) >= 0.8, recall
    # The reference's budget holds with 90% confidence per batch, not in every batch: on average over the
    # seeds, and no seed far beyond it (3,800 clean rows at 0.8% vary by 0.15 points by chance alone).
    with_reference, batch_only = false_quarantine["reference"], false_quarantine["batch only"]
    assert np.mean(with_reference) <= 0.01 and max(with_reference) <= 0.0125, with_reference
    assert max(batch_only) <= 0.02, batch_only


def test_a_text_detector_is_skipped_with_its_reason_where_there_is_no_text():
    batch = make_frame(200, seed=5)
    named = score_rows(batch, None, {"x1": "numeric", "colour": "categorical"}, "label",
                       ScanConfig(label_col="label", detectors=("ecod", "trigger_tokens")))
    assert "no text column" in named.calibration["skipped_detectors"]["trigger_tokens"]
    auto = score_rows(batch, None, {"x1": "numeric", "colour": "categorical"}, "label", ScanConfig(label_col="label"))
    assert "trigger_tokens" not in auto.scores and auto.calibration["skipped_detectors"] == {}


@pytest.mark.parametrize("name", BACKDOOR_DETECTORS + ["knn_label"])
def test_a_class_too_small_to_fit_is_a_clear_error(name):
    with pytest.raises(ValueError, match="needs at least .* rows"):
        make_detector(name, seed=0).fit(np.zeros((1, 3)), np.array(["a"], dtype=object))


def test_class_conditional_fits_transductive_detectors_per_class():
    X_a, mask_a = class_with_trigger_cluster(seed=1)
    X_b, _ = class_with_trigger_cluster(seed=2, n_poison=0)
    X = np.vstack([X_a + 10, X_b])
    y = np.array(["a"] * len(X_a) + ["b"] * len(X_b), dtype=object)
    scores = ClassConditional(make_detector("spectral", seed=0)).fit_decision_function(X, y)
    assert precision_at_k(scores[: len(X_a)], mask_a) >= 0.9


def test_every_detector_scores_a_batch_with_and_without_a_reference():
    reference, batch = make_frame(400, seed=1), make_frame(120, seed=2)
    for frame in (reference, batch):
        frame.insert(0, ROW_ID, np.arange(len(frame)))
    for frame in (reference, batch):  # free text, for the detectors that read it
        frame["note"] = [f"note {i % 50} from {colour}" for i, colour in enumerate(frame["colour"])]
    kinds = {"x1": "numeric", "x2": "numeric", "count": "numeric", "colour": "categorical", "note": "text"}
    config = ScanConfig(label_col="label", detectors=tuple(REGISTRY), max_false_quarantine=0.2)
    for given in (reference, None):
        scores = score_rows(batch, given, kinds, "label", config)
        # Named but unable to run, each skipped with its reason in the report: without a reference the label
        # models; with this one (about 130 rows a class) the boosted one, which fits a class on 200 at least.
        skipped = {"label_model", "label_trees"} if given is None else {"label_trees"}
        expected = set(REGISTRY) - skipped
        assert set(scores.scores) == expected
        assert set(scores.calibration["skipped_detectors"]) == skipped
        for name in expected:
            assert scores.scores[name].shape == (len(batch),) and np.isfinite(scores.scores[name]).all()


@pytest.mark.usefixtures("prefect_harness")
def test_rows_are_conserved_with_every_detector_enabled(tmp_path):
    make_frame(400, seed=1).to_csv(tmp_path / "ref.csv", index=False)
    batch = make_frame(150, seed=2)
    batch.loc[:9, "label"] = np.where(batch.loc[:9, "label"] == "yes", "no", "yes")
    batch.to_csv(tmp_path / "batch.csv", index=False)
    config = ScanConfig(label_col="label", reference=tmp_path / "ref.csv", out_dir=tmp_path / "out",
                        detectors=tuple(REGISTRY))
    summary = run_scan(tmp_path / "batch.csv", config)
    paths = OutputPaths.for_batch(tmp_path / "out", summary.dataset, summary.batch_id)
    clean = pd.read_parquet(paths.clean)
    held = pd.read_parquet(paths.quarantine) if paths.quarantine.exists() else clean.iloc[:0]
    assert sorted(clean[ROW_ID].tolist() + held[ROW_ID].tolist()) == list(range(150))
    report = (tmp_path / "out" / "reports" / summary.dataset / f"{summary.batch_id}.json").read_text()
    for name in REGISTRY:
        assert f'"{name}"' in report


@pytest.mark.usefixtures("prefect_harness")
def test_backdoored_digits_are_quarantined_without_a_reference(tmp_path):
    from sklearn.datasets import load_digits

    digits = load_digits()
    frame = pd.DataFrame(digits.data, columns=[f"px{i}" for i in range(64)]).assign(digit=digits.target)
    rng = np.random.default_rng(0)
    triggered = rng.choice(np.flatnonzero(frame["digit"] != 0), len(frame) // 10, replace=False)
    frame.loc[triggered, ["px54", "px55", "px62", "px63"]] = 16.0  # a 2x2 patch in the bottom-right corner
    frame.loc[triggered, "digit"] = 0  # half of class 0 is now triggered rows from the other digits
    frame.to_parquet(tmp_path / "digits.parquet")
    config = ScanConfig(label_col="digit", out_dir=tmp_path / "out", detectors=("trigger_values",))
    summary = run_scan(tmp_path / "digits.parquet", config)
    paths = OutputPaths.for_batch(tmp_path / "out", summary.dataset, summary.batch_id)
    held = pd.read_parquet(paths.quarantine)[ROW_ID].to_numpy()
    assert len(held) + len(pd.read_parquet(paths.clean)) == len(frame)
    assert np.isin(triggered, held).mean() >= 0.95
    assert len(np.setdiff1d(held, triggered)) <= 0.01 * (len(frame) - len(triggered))


def test_a_precomputed_embedding_is_what_the_backdoor_checks_read():
    rng = np.random.default_rng(0)
    embedding, mask = class_with_trigger_cluster(seed=4, n_rows=300, n_poison=20)
    frame = pd.DataFrame(embedding, columns=[f"emb_{i}" for i in range(embedding.shape[1])])
    frame["amount"] = rng.normal(size=300)  # the raw column carries no trace of the trigger
    frame["label"] = "a"
    frame.insert(0, ROW_ID, np.arange(300))
    kinds = {"amount": "numeric"}
    config = ScanConfig(label_col="label", detectors=("spectral",), embedding_prefix="emb_")
    scores = score_rows(frame, None, kinds, "label", config).scores["spectral"]
    assert precision_at_k(scores, mask) >= 0.9


def test_free_text_columns_are_embedded_offline_into_a_fixed_width():
    from poisonguard.featurize.features import FeatureEncoder, infer_kinds

    rng = np.random.default_rng(0)
    notes = ["paid on time", "late payment", "good standing", "asked for more credit"]
    frame = pd.DataFrame({"x": rng.normal(size=200), "label": rng.choice(["a", "b"], 200),
                          "note": [f"{rng.choice(notes)} case {i}" for i in range(200)]})
    frame.loc[5, "note"] = None
    kinds = infer_kinds(frame, "label")
    assert kinds["note"] == "text"
    encoder = FeatureEncoder(kinds, "label").fit(frame)
    encoded = encoder.transform(frame)
    assert encoded.shape == (200, 17) and np.isfinite(encoded).all()
    unseen = encoder.transform(frame.iloc[:1].assign(note="words never seen before"))
    assert unseen.shape == (1, 17) and np.isfinite(unseen).all()
