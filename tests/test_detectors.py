"""The detector contract, planted outliers, class-conditional scoring and calibration to the budget."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_frame

from poisonguard.config import ScanConfig
from poisonguard.detectors import REGISTRY, ClassConditional, auto_detectors, detector_spec, expand_auto, make_detector
from poisonguard.errors import ConfigError
from poisonguard.featurize.features import FeatureEncoder, infer_kinds
from poisonguard.score.rows import score_rows

OUTLIER_DETECTORS = sorted(name for name, cls in REGISTRY.items() if cls.spec.reason == "outlier")


def blob_with_outlier(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(300, 4))
    X[17] = [8.0, -8.0, 8.0, -8.0]
    return X


@pytest.mark.parametrize("name", OUTLIER_DETECTORS)
def test_each_outlier_detector_follows_the_contract_and_ranks_a_planted_outlier_first(name):
    X = blob_with_outlier()
    detector = make_detector(name, seed=0)
    assert detector.fit(X) is detector
    scores = detector.decision_function(X)
    assert scores.shape == (300,)
    assert np.isfinite(scores).all()
    assert int(np.argmax(scores)) == 17


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_detectors_are_deterministic_with_a_fixed_seed(name):
    X = blob_with_outlier(1)
    y = np.where(X[:, 0] > 0, "up", "down").astype(object)
    if detector_spec(name).reads == "text":  # one text per row
        X = np.array([f"w{int(a * 2)} v{int(b * 2)} {label}" for a, b, label in zip(X[:, 0], X[:, 1], y)], dtype=object)
    first = make_detector(name, seed=3).fit(X, y).decision_function(X, y)
    second = make_detector(name, seed=3).fit(X, y).decision_function(X, y)
    np.testing.assert_array_equal(first, second)


def test_detectors_refuse_non_finite_features():
    X = blob_with_outlier()
    X[0, 0] = np.nan
    with pytest.raises(ValueError, match="finite"):
        make_detector("iforest").fit(X)


def test_unknown_detector_name_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown detector 'lof'"):
        make_detector("lof")


def test_class_conditional_scoring_exposes_a_row_that_looks_like_another_class():
    rng = np.random.default_rng(0)
    X = np.vstack([rng.normal(-3, 1, (200, 2)), rng.normal(3, 1, (200, 2))])
    y = np.array(["a"] * 200 + ["b"] * 200, dtype=object)
    flipped = X[250].copy()  # an ordinary "b" row claiming to be "a"
    X_test, y_test = np.vstack([X[:5], flipped]), np.array(["a"] * 6, dtype=object)
    pooled = make_detector("iforest").fit(X).decision_function(X_test)
    per_class = ClassConditional(make_detector("iforest"), min_class_rows=30).fit(X, y).decision_function(X_test, y_test)
    assert int(np.argmax(per_class)) == 5
    assert per_class[5] - per_class[:5].max() > pooled[5] - pooled[:5].max()


def test_class_conditional_falls_back_to_the_all_class_model_for_small_or_unseen_classes():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(120, 3))
    y = np.array(["big"] * 110 + ["tiny"] * 10, dtype=object)
    detector = ClassConditional(make_detector("ecod"), min_class_rows=30).fit(X, y)
    assert set(detector.per_class_) == {"big"}
    scores = detector.decision_function(X[:3], np.array(["tiny", "never-seen", None], dtype=object))
    np.testing.assert_allclose(scores, detector.overall_.decision_function(X[:3]))


def test_calibrated_thresholds_keep_clean_rows_within_the_false_quarantine_budget():
    reference = make_frame(4000, seed=10)
    clean_batch = make_frame(4000, seed=11)
    kinds = infer_kinds(reference, "label")
    config = ScanConfig(label_col="label", max_false_quarantine=0.02)
    result = score_rows(clean_batch, reference, kinds, "label", config)
    flagged = np.column_stack(list(result.flags.values())).any(axis=1)
    assert result.calibration["mode"] == "reference"
    assert result.calibration["holdout_quarantine_rate"] <= 0.02
    assert flagged.mean() <= 0.02 * 1.5  # a fresh clean sample: the budget holds up to sampling noise
    for p_values in result.p_values.values():
        assert ((p_values > 0) & (p_values <= 1)).all()


def test_without_a_reference_the_tail_rule_flags_planted_outliers_and_few_clean_rows():
    batch = make_frame(1000, seed=12)
    batch.loc[:9, "x2"] = 25.0
    kinds = infer_kinds(batch, "label")
    result = score_rows(batch, None, kinds, "label", ScanConfig(label_col="label"))
    flagged = np.column_stack(list(result.flags.values())).any(axis=1)
    assert flagged[:10].all()
    assert flagged[10:].mean() < 0.02
    assert result.calibration["mode"] == "batch"
    estimate = result.calibration["false_quarantine_estimate"]
    assert estimate["low"] <= estimate["share"] <= estimate["high"] and "20%" in result.calibration["note"]


def test_feature_encoder_turns_nan_inf_and_unseen_categories_into_finite_numbers():
    train = make_frame(100)
    encoder = FeatureEncoder(infer_kinds(train, "label"), "label").fit(train)
    batch = make_frame(5, seed=4)
    batch.loc[0, "x1"] = np.nan
    batch.loc[1, "x2"] = np.inf
    batch.loc[2, "x2"] = -1e308
    batch.loc[3, "colour"] = "x" * 10_000
    batch.loc[4, "colour"] = None
    matrix = encoder.transform(batch)
    assert matrix.shape[0] == 5
    assert np.isfinite(matrix).all()


@pytest.mark.parametrize("model", ["logistic", "boosting"])
def test_label_model_ranks_a_flipped_label_first(model):
    rng = np.random.default_rng(2)
    X = np.vstack([rng.normal(-2, 1, (200, 3)), rng.normal(2, 1, (200, 3))])
    y = np.array(["a"] * 200 + ["b"] * 200, dtype=object)
    detector = make_detector("label_model", seed=0, model=model).fit(X, y)
    y_batch = y.copy()
    y_batch[10] = "b"  # a typical "a" row now labelled "b"
    scores = detector.decision_function(X, y_batch)
    assert int(np.argmax(scores)) == 10
    assert np.isfinite(scores).all() and scores.shape == (400,)
    unseen = detector.decision_function(X[:2], np.array(["a", "zzz"], dtype=object))
    assert unseen[1] > unseen[0]  # a label the model never saw is as improbable as it gets


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_label_trees_finds_a_flipped_region_that_the_linear_label_model_averages_away(seed):
    rng = np.random.default_rng(seed)
    # The label follows the sign of x0 * x1: no line separates the classes, so a linear model's
    # probabilities say little, and a region whose labels were flipped does not stand out to it.
    X = rng.normal(size=(3000, 4))
    y = np.where(X[:, 0] * X[:, 1] > 0, "a", "b").astype(object)
    reference, batch = slice(0, 2000), slice(2000, 3000)
    labels = y[batch].copy()
    region = (X[batch, 0] > 0.8) & (X[batch, 1] > 0.8)  # a corner of class "a", relabelled "b"
    labels[region] = "b"
    found = {}
    for name in ("label_trees", "label_model"):
        detector = make_detector(name, seed=seed).fit(X[reference], y[reference])
        held_out = detector.decision_function(X[batch][~region], labels[~region])
        scores = detector.decision_function(X[batch], labels)
        found[name] = float(np.mean(scores[region] > np.quantile(held_out, 0.99)))
    assert region.sum() >= 20
    assert found["label_trees"] >= 0.8 > 0.3 >= found["label_model"]


def test_label_trees_reads_dense_columns_and_is_in_auto_with_a_reference_only():
    spec = detector_spec("label_trees")
    assert spec.reads == "features" and spec.needs_reference and spec.auto == ("reference",)
    assert "label_trees" in auto_detectors("reference") and "label_trees" not in auto_detectors("batch")
    assert spec.min_class_rows == 200  # on a smaller reference auto leaves it out (the test below)
    assert make_detector("label_trees", seed=3).get_params() == {"random_state": 3}


def test_label_model_refuses_to_run_without_labels_or_with_one_class():
    X = np.random.default_rng(0).normal(size=(50, 2))
    with pytest.raises(ValueError, match="needs the label column"):
        make_detector("label_model").fit(X)
    with pytest.raises(ValueError, match="at least two label classes"):
        make_detector("label_model").fit(X, np.array(["a"] * 50, dtype=object))
    with pytest.raises(ValueError, match="logistic, boosting"):
        make_detector("label_model", model="forest").fit(X, np.array(["a", "b"] * 25, dtype=object))


def test_knn_scores_a_row_far_from_every_fitted_row_highest_and_fits_a_tiny_class():
    rng = np.random.default_rng(4)
    X = rng.normal(size=(300, 4))
    detector = make_detector("knn", seed=0).fit(X)
    scores = detector.decision_function(np.vstack([X[:50], [[6.0, 6.0, 6.0, 6.0]]]))
    assert int(np.argmax(scores)) == 50
    few = make_detector("knn", seed=0).fit(X[:3])  # fewer rows than neighbours
    assert np.isfinite(few.decision_function(X[:10])).all()


def test_knn_joins_auto_on_a_large_reference_only_and_runs_named_on_a_small_one():
    batch = make_frame(300, seed=13)
    kinds = infer_kinds(batch, "label")
    large, small = make_frame(1_200, seed=14), make_frame(300, seed=14)
    assert large["label"].value_counts().min() >= detector_spec("knn").auto_min_class_rows
    assert small["label"].value_counts().max() < detector_spec("knn").auto_min_class_rows
    assert "knn" in score_rows(batch, large, kinds, "label", ScanConfig(label_col="label")).scores
    left_out = score_rows(batch, small, kinds, "label", ScanConfig(label_col="label"))
    assert "knn" not in left_out.scores and left_out.calibration["skipped_detectors"] == {}
    named = score_rows(batch, small, kinds, "label", ScanConfig(label_col="label", detectors=("auto", "knn")))
    assert "knn" in named.scores and named.calibration["skipped_detectors"] == {}


def test_detectors_named_that_need_a_reference_or_labels_are_skipped_and_reported():
    batch = make_frame(300, seed=13)
    kinds = infer_kinds(batch, "label")
    named = ("ecod", "iforest", "label_model")
    without_reference = score_rows(batch, None, kinds, "label", ScanConfig(label_col="label", detectors=named))
    assert "label_model" not in without_reference.scores
    assert "reference" in without_reference.calibration["skipped_detectors"]["label_model"]
    without_labels = score_rows(batch, make_frame(300, seed=14), infer_kinds(batch, None), None,
                                ScanConfig(detectors=named))
    assert set(without_labels.scores) == {"ecod", "iforest"}
    assert "label column" in without_labels.calibration["skipped_detectors"]["label_model"]


def test_auto_runs_what_applies_to_what_the_scan_is_given_and_reports_no_skips():
    batch, reference = make_frame(300, seed=13), make_frame(300, seed=14)
    kinds = infer_kinds(batch, "label")
    runs = {
        "labels and reference": score_rows(batch, reference, kinds, "label", ScanConfig(label_col="label")),
        "labels only": score_rows(batch, None, kinds, "label", ScanConfig(label_col="label")),
        "reference only": score_rows(batch, reference, infer_kinds(batch, None), None, ScanConfig()),
    }
    assert set(auto_detectors("reference")) <= set(REGISTRY) and "label_model" in auto_detectors("reference")
    assert "label_model" not in auto_detectors("batch")
    for given, scores in runs.items():
        # Without labels the reference is one class of all its rows.
        smallest_class = len(reference) if given == "reference only" else int(reference["label"].value_counts().min())
        needs_met = [n for n in auto_detectors("batch" if given == "labels only" else "reference")
                     if (given != "reference only" or not detector_spec(n).needs_labels)
                     and detector_spec(n).reads != "text"  # the frame has no free text
                     and (given == "labels only" or max(detector_spec(n).min_class_rows,
                                                        detector_spec(n).auto_min_class_rows) <= smallest_class)]
        assert set(scores.scores) == set(needs_met), given
        assert scores.calibration["skipped_detectors"] == {}, given


def test_auto_takes_parameters_for_its_members_and_extra_detectors_beside_it():
    config = ScanConfig(label_col="label", detectors=("auto", "pyod:HBOS"),
                        detector_params={"iforest": {"n_estimators": 7}})
    assert expand_auto(config.detection.detectors, "batch") == [*auto_detectors("batch"), "pyod:HBOS"]
    batch = make_frame(200, seed=3)
    scores = score_rows(batch, None, infer_kinds(batch, "label"), "label", config)
    assert {"iforest", "pyod:HBOS"} <= set(scores.scores)
    with pytest.raises(ConfigError, match="set of detectors"):
        make_detector("auto")


def test_an_unknown_detector_in_the_config_is_a_config_error_not_a_crash():
    batch = make_frame(100, seed=15)
    with pytest.raises(ConfigError, match="unknown detector 'magic'"):
        score_rows(batch, None, infer_kinds(batch, "label"), "label", ScanConfig(detectors=("ecod", "magic")))


def test_the_union_threshold_says_which_guarantee_it_carries():
    from poisonguard.decide.calibration import union_threshold

    rng = np.random.default_rng(0)
    for rows, guarantee in ((3000, "with 90% confidence"), (150, "in expectation"), (20, "estimate")):
        _, carried = union_threshold(rng.uniform(size=rows), 0.01, 3)
        assert carried == guarantee


def test_the_tail_model_threshold_lands_near_the_budget_on_uniform_p_values():
    from poisonguard.decide.calibration import union_threshold

    # One detector whose 60 held-out p-values are exactly uniform: too few for any rank to be rare enough at
    # 1%, so the threshold is the tail model's estimate, and the right one is the budget itself.
    thresholds = [union_threshold(np.random.default_rng(seed).uniform(size=60), 0.01, 1) for seed in range(40)]
    assert {carried for _, carried in thresholds} == {"estimate"}
    assert 0.004 < np.median([t for t, _ in thresholds]) < 0.025


def test_a_small_reference_is_cross_fitted_so_every_row_calibrates():
    reference, batch = make_frame(400, seed=21), make_frame(3000, seed=22)
    kinds = infer_kinds(batch, "label")
    config = ScanConfig(label_col="label", detectors=("ecod", "iforest", "label_model"))
    result = score_rows(batch, reference, kinds, "label", config)
    calibration = result.calibration
    assert calibration["folds"] == 5
    assert calibration["holdout_rows"] == 400 and calibration["fit_rows"] == 320
    assert calibration["guarantee"] == "in expectation" and "400 reference rows" in calibration["warning"]
    flagged = np.logical_or.reduce(list(result.flags.values()))
    assert flagged.mean() < 0.02  # the batch is clean: about the 1% budget is quarantined
    again = score_rows(batch, reference, kinds, "label", config)
    for name in result.scores:
        np.testing.assert_array_equal(again.scores[name], result.scores[name])


def test_a_large_reference_is_split_once_and_ranks_set_the_threshold():
    reference, batch = make_frame(2400, seed=23), make_frame(500, seed=24)
    kinds = infer_kinds(batch, "label")
    calibration = score_rows(batch, reference, kinds, "label", ScanConfig(label_col="label")).calibration
    assert calibration["folds"] == 1
    assert calibration["holdout_rows"] == 1200 and calibration["fit_rows"] == 1200
    assert calibration["guarantee"] == "with 90% confidence"


def test_tail_p_values_tell_a_far_outlier_from_the_largest_clean_score():
    from poisonguard.decide.calibration import tail_p_values

    reference = np.random.default_rng(0).normal(size=500)
    just_above, far_beyond = tail_p_values(reference, np.array([reference.max() + 0.01, 20.0]))
    assert far_beyond < just_above <= 1 / 501 + 1e-12
    held_out = tail_p_values(reference, reference, np.arange(500))
    assert held_out.min() > 0 and (held_out <= 1).all()


@pytest.mark.parametrize("name", ["ecod", "iforest", "label_model"])
def test_scores_of_a_row_do_not_depend_on_the_rows_scored_with_it(name):
    rng = np.random.default_rng(5)
    X = rng.normal(size=(400, 6))
    y = np.where(X[:, 0] > 0, "up", "down").astype(object)
    detector = make_detector(name, seed=0).fit(X[:200], y[:200])
    whole = detector.decision_function(X[200:], y[200:])
    chunks = np.concatenate([detector.decision_function(X[i : i + 50], y[i : i + 50]) for i in range(200, 400, 50)])
    np.testing.assert_allclose(chunks, whole)


def test_strict_refuses_a_reference_too_small_for_the_confident_budget():
    from poisonguard.errors import ConfigError

    reference, batch = make_frame(400, seed=21), make_frame(300, seed=22)
    kinds = infer_kinds(batch, "label")
    strict = ScanConfig(label_col="label", strict=True)
    with pytest.raises(ConfigError, match="needs a reference of at least 1,112 rows, and the scan has a reference of 400"):
        score_rows(batch, reference, kinds, "label", strict)
    with pytest.raises(ConfigError, match="and the scan has no reference"):
        score_rows(batch, None, kinds, "label", strict)
    assert score_rows(batch, make_frame(1200, seed=23), kinds, "label", strict).calibration["guarantee"] == (
        "with 90% confidence")
    assert "strict" not in strict.fingerprint_fields()  # refusing changes no row's outcome


def _digits_with_flips(seed: int, share: float = 0.05):
    import pandas as pd
    from sklearn.datasets import load_digits

    digits = load_digits()
    frame = pd.DataFrame(digits.data, columns=[f"px{i}" for i in range(64)])
    labels = digits.target.copy()
    rng = np.random.default_rng(seed)
    flipped = rng.choice(len(labels), int(share * len(labels)), replace=False)
    labels[flipped] = (labels[flipped] + rng.integers(1, 10, len(flipped))) % 10
    frame["digit"] = labels.astype(str)
    frame.insert(0, "_row_id", np.arange(len(frame)))
    return frame, np.isin(np.arange(len(frame)), flipped)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_without_a_reference_the_default_scan_finds_flipped_labels_by_a_model_out_of_fold(seed):
    frame, flipped = _digits_with_flips(seed)
    result = score_rows(frame, None, infer_kinds(frame, "digit"), "digit", ScanConfig(label_col="digit", seed=seed))
    assert "label_oof" in result.flags
    flagged = np.column_stack(list(result.flags.values())).any(axis=1)
    assert flagged[flipped].mean() >= 0.3  # 0.51-0.67 over these seeds; the outlier detectors alone found 0.31
    assert flagged[~flipped].mean() <= 0.02


def test_a_label_model_out_of_fold_scores_new_rows_as_it_scores_the_fitted_ones():
    frame, _ = _digits_with_flips(3)
    X, y = frame.filter(like="px").to_numpy(), frame["digit"].to_numpy()
    detector = make_detector("label_oof", max_fit_rows=1_000)
    scores = detector.fit_decision_function(X, y)
    # Rows beyond the seeded 1,000-row sample were never fitted: the folds' models, averaged, score them.
    outside = np.setdiff1d(np.arange(len(X)), np.random.default_rng(0).choice(len(X), 1_000, replace=False))
    np.testing.assert_allclose(scores[outside], detector.decision_function(X[outside], y[outside]))
    assert np.isfinite(scores).all()
    assert detector.decision_function(X[:3], np.array(["new", "new", "new"])).min() > 20  # an unseen label


def test_a_label_model_that_cannot_predict_the_labels_refuses_to_judge_them():
    rng = np.random.default_rng(4)
    X, y = rng.normal(size=(600, 5)), rng.choice(["a", "b", "c"], 600)
    with pytest.raises(ValueError, match="balanced accuracy .* below min_accuracy 60%"):
        make_detector("label_oof").fit_decision_function(X, y)
