"""Calibration as pure functions: coverage checked on synthetic score arrays, no detector involved."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from poisonguard.decide.calibration import (
    WEIGHT_FLOOR,
    WEIGHT_FOLDS,
    batch_groups,
    batch_p_values,
    calibration_groups,
    cell_excess,
    class_weights,
    detector_weights,
    group_categories,
    group_codes,
    group_holdout_rows,
    holdout_group_codes,
    holdout_p_values,
    holdout_row_weights,
    model_false_quarantine,
    model_limit,
    rules_seen_in_batch,
    tail_false_quarantine,
    tail_limit,
    tail_limits,
    tail_p_values,
    union_threshold,
    union_threshold_with_rules,
    weight_folds,
    weighted_min_p,
)

BUDGET = 0.01


def _false_quarantine(n_hold: int, n_detectors: int, seed: int, n_new: int = 20_000) -> tuple[float, str]:
    """The share of new clean rows the union threshold flags, when every detector's scores of held-out and
    new rows come from one distribution (independent across detectors, heavy-tailed)."""
    rng = np.random.default_rng(seed)
    hold = rng.standard_t(3, size=(n_detectors, n_hold))
    new = rng.standard_t(3, size=(n_detectors, n_new))
    groups = np.full(0, "*", dtype=object)
    min_p_hold = np.vstack([holdout_p_values(scores, groups) for scores in hold]).min(axis=0)
    alpha, guarantee = union_threshold(min_p_hold, BUDGET, n_detectors)
    min_p_new = np.vstack([tail_p_values(h, s) for h, s in zip(hold, new)]).min(axis=0)
    return float((min_p_new <= alpha).mean()), guarantee


@pytest.mark.parametrize("n_hold", [150, 500])
def test_the_union_of_three_detectors_holds_the_budget_in_expectation_at_small_n(n_hold):
    shares, guarantees = zip(*(_false_quarantine(n_hold, 3, seed) for seed in range(200)))
    assert set(guarantees) == {"in expectation"}
    standard_error = np.std(shares) / np.sqrt(len(shares))
    assert np.mean(shares) <= BUDGET + 3 * standard_error
    assert np.mean(shares) >= 0.4 * BUDGET  # the budget is spent, not hoarded


def test_with_90_percent_confidence_at_most_a_tenth_of_references_exceed_the_budget():
    shares, guarantees = zip(*(_false_quarantine(3_000, 3, seed, n_new=50_000) for seed in range(150)))
    assert set(guarantees) == {"with 90% confidence"}
    above = np.mean(np.array(shares) > BUDGET)
    assert above <= 0.1 + 3 * np.sqrt(0.1 * 0.9 / len(shares))


def _false_quarantine_with_a_rule(rule_share: float, seed: int, n_hold: int = 3_000,
                                  n_new: int = 50_000) -> tuple[float, list[str]]:
    """As :func:`_false_quarantine` with three detectors, one of which also flags ``rule_share`` of clean rows
    (held-out and new alike) by its own threshold."""
    rng = np.random.default_rng(seed)
    hold = rng.standard_t(3, size=(3, n_hold))
    new = rng.standard_t(3, size=(3, n_new))
    groups = np.full(0, "*", dtype=object)
    min_p_hold = np.vstack([holdout_p_values(scores, groups) for scores in hold]).min(axis=0)
    alpha, _, kept = union_threshold_with_rules(min_p_hold, {"rule": rng.random(n_hold) < rule_share}, BUDGET, 3)
    min_p_new = np.vstack([tail_p_values(h, s) for h, s in zip(hold, new)]).min(axis=0)
    flagged = (min_p_new <= alpha) | ((rng.random(n_new) < rule_share) if kept else False)
    return float(flagged.mean()), kept


def test_a_detector_s_own_threshold_is_kept_within_the_budget_with_90_percent_confidence():
    shares, kept = zip(*(_false_quarantine_with_a_rule(0.004, seed) for seed in range(150)))
    assert sum(map(bool, kept)) >= 0.9 * len(kept)  # affordable: 0.4% of a 1% budget
    above = np.mean(np.array(shares) > BUDGET)
    assert above <= 0.1 + 3 * np.sqrt(0.1 * 0.9 / len(shares))
    assert np.mean(shares) >= 0.5 * BUDGET


def test_an_own_threshold_that_costs_the_whole_budget_is_dropped():
    rng = np.random.default_rng(0)
    min_p_hold = rng.random(3_000)
    alpha, guarantee, kept = union_threshold_with_rules(min_p_hold, {"rule": rng.random(3_000) < 0.03}, BUDGET, 1)
    assert kept == []
    assert (alpha, guarantee) == union_threshold(min_p_hold, BUDGET, 1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_an_own_threshold_is_kept_only_where_it_flags_the_batch_beyond_its_held_out_share(seed):
    """A rule flagging clean rows at one rate, held-out or batch, finds the data's property, not poison; one
    whose batch share is beyond what its held-out share explains (a trigger's rows) is kept."""
    rng = np.random.default_rng(seed)
    hold, batch = rng.random(3_000) < 0.005, rng.random(20_000) < 0.005
    triggered = batch | (np.arange(20_000) < 400)  # 2% of the batch carries the trigger
    unseen = np.zeros(3_000, dtype=bool)  # no held-out row has the trigger
    assert rules_seen_in_batch({"natural": hold, "trigger": hold, "new": unseen},
                               {"natural": batch, "trigger": triggered, "new": triggered}) == ["trigger", "new"]


def _weighted_union(seed: int, shift: float, n_hold: int = 3_000, n_clean: int = 20_000,
                    n_poison: int = 600) -> tuple[float, float, float, dict[str, float]]:
    """Three detectors, heavy-tailed scores; the poisoned rows stand out in the first alone (by ``shift``).
    (false quarantine of the weighted union, its recall, the plain union's recall, the weights)."""
    rng = np.random.default_rng(seed)
    hold = rng.standard_t(3, size=(3, n_hold))
    batch = rng.standard_t(3, size=(3, n_clean + n_poison))
    batch[0, n_clean:] += shift
    groups = np.full(0, "*", dtype=object)
    names = ["a", "b", "c"]
    hold_p = {name: holdout_p_values(scores, groups) for name, scores in zip(names, hold)}
    batch_p = {name: tail_p_values(h, b) for name, h, b in zip(names, hold, batch)}
    weights = detector_weights(batch_p, BUDGET, n_hold)
    alpha, _ = union_threshold(weighted_min_p(hold_p, weights), BUDGET, 3)
    flagged = weighted_min_p(batch_p, weights) <= alpha
    plain_alpha, _ = union_threshold(weighted_min_p(hold_p, dict.fromkeys(names, 1.0)), BUDGET, 3)
    plain = weighted_min_p(batch_p, dict.fromkeys(names, 1.0)) <= plain_alpha
    return (float(flagged[:n_clean].mean()), float(flagged[n_clean:].mean()), float(plain[n_clean:].mean()),
            weights)


def test_a_clean_batch_leaves_the_detectors_equal_shares_of_the_budget():
    evenly = [set(_weighted_union(seed, shift=0.0)[3].values()) == {1.0} for seed in range(40)]
    assert np.mean(evenly) >= 0.8  # an excess beyond chance is needed to move a weight


def test_the_detector_that_sees_the_poison_gets_more_of_the_budget_and_the_union_still_holds_it():
    runs = [_weighted_union(seed, shift=6.0) for seed in range(100)]
    shares, recalls, plain_recalls, weights = zip(*runs)
    assert all(min(w.values()) >= WEIGHT_FLOOR for w in weights)  # every detector keeps its floor
    assert np.mean([w["a"] > 1.0 and w["a"] == max(w.values()) for w in weights]) >= 0.9
    # The budget holds with 90% confidence, as for the plain union: the weights only move it between detectors.
    assert np.mean(np.array(shares) > BUDGET) <= 0.1 + 3 * np.sqrt(0.1 * 0.9 / len(shares))
    assert np.mean(recalls) > np.mean(plain_recalls) + 0.05



@pytest.mark.parametrize("n_hold", [60, 150, 999, 3_000])
def test_equal_row_weights_give_the_unweighted_threshold(n_hold):
    rng = np.random.default_rng(n_hold)
    values = np.round(rng.random(n_hold), 3)  # ties included
    assert union_threshold(values, BUDGET, 3, np.full(n_hold, 2.5)) == union_threshold(values, BUDGET, 3)


def _class_union(seed: int, hold_share: float = 0.5, batch_share: float = 0.5, by_class: bool = True,
                 reweight: bool = True, n_hold: int = 3_000, n_clean: int = 20_000,
                 n_poison: int = 400) -> tuple[float, float, dict[str, np.ndarray]]:
    """Two classes, three detectors with heavy-tailed scores read within each class; the poisoned rows are
    relabelled into class ``b`` and stand out in the first detector alone. ``hold_share`` / ``batch_share``:
    class b's share of the held-out and clean batch rows. (false quarantine, recall, the weights)."""
    rng = np.random.default_rng(seed)
    y_hold = np.where(rng.random(n_hold) < hold_share, "b", "a").astype(object)
    y_batch = np.concatenate([np.where(rng.random(n_clean) < batch_share, "b", "a"), np.full(n_poison, "b")])
    hold, batch = rng.standard_t(3, size=(3, n_hold)), rng.standard_t(3, size=(3, n_clean + n_poison))
    batch[0, n_clean:] += 6.0
    groups_hold = calibration_groups(y_hold, 50)
    groups_batch = batch_groups(y_batch.astype(object), groups_hold)
    n_groups = len(group_categories(groups_hold))
    hold_codes, codes = holdout_group_codes(groups_hold, n_hold), group_codes(groups_batch, len(y_batch))
    names = ["a", "b", "c"]
    hold_p = {name: holdout_p_values(scores, groups_hold) for name, scores in zip(names, hold)}
    batch_p = {name: batch_p_values(h, groups_hold, b, groups_batch) for name, h, b in zip(names, hold, batch)}
    if by_class:
        excess = cell_excess(batch_p, codes, group_holdout_rows(hold_codes, n_groups), BUDGET)
        weights = class_weights(excess, np.bincount(codes, minlength=n_groups) / len(codes))
    else:
        weights = {name: np.full(n_groups, w) for name, w in detector_weights(batch_p, BUDGET, n_hold).items()}
    row_weights = None
    if reweight:  # as a scan does: the batch's class shares less the poison the detectors single out
        excess = cell_excess(batch_p, codes, group_holdout_rows(hold_codes, n_groups), BUDGET)
        row_weights = holdout_row_weights(codes, hold_codes, n_groups, np.max(list(excess.values()), axis=0))
    alpha, _ = union_threshold(weighted_min_p(hold_p, {n: weights[n][hold_codes] for n in names}), BUDGET, 3,
                               row_weights)
    flagged = weighted_min_p(batch_p, {n: weights[n][codes] for n in names}) <= alpha
    return float(flagged[:n_clean].mean()), float(flagged[n_clean:].mean()), weights


def test_the_class_where_the_poison_shows_gets_the_detectors_budget_and_the_union_still_holds_it():
    runs = [_class_union(seed) for seed in range(40)]
    shares, recalls, weights = zip(*runs)
    # the first detector in class b (index 1 of the classes a, b, *) holds the most weight, each cell its floor
    assert np.mean([w["a"][1] == max(cells.max() for cells in w.values()) for w in weights]) >= 0.9
    assert all(min(cells.min() for cells in w.values()) >= WEIGHT_FLOOR for w in weights)
    assert np.mean(np.array(shares) > BUDGET) <= 0.1 + 3 * np.sqrt(0.1 * 0.9 / len(shares))
    per_detector = [_class_union(seed, by_class=False)[1] for seed in range(40)]
    assert np.mean(recalls) > np.mean(per_detector) + 0.1  # measured: 0.86 against 0.57 (60 seeds)


def test_a_batch_with_more_of_the_weighted_class_than_the_reference_still_holds_the_budget():
    """Label shift: class b is 30% of the held-out rows and 70% of the batch's clean rows. Unweighted, the
    held-out rows under-count the class that holds the weight (measured, 60 seeds: 1.25% of clean rows
    flagged on average, 73% of runs above the 1% budget); weighted to the batch's shares they stand for it."""
    shifted = [_class_union(seed, hold_share=0.3, batch_share=0.7)[0] for seed in range(40)]
    assert np.mean(np.array(shifted) > BUDGET) <= 0.1 + 3 * np.sqrt(0.1 * 0.9 / len(shifted))
    unweighted = [_class_union(seed, hold_share=0.3, batch_share=0.7, reweight=False)[0] for seed in range(40)]
    assert np.mean(unweighted) > BUDGET  # the failure the weights prevent


def test_held_out_rows_stand_for_the_batchs_clean_class_shares():
    hold_codes = np.repeat([0, 1], [600, 400])  # classes a and b, 60% / 40% of the held-out rows
    batch_codes = np.repeat([0, 1], [300, 700])  # the batch: 30% / 70%
    weights = holdout_row_weights(batch_codes, hold_codes, 3)
    assert weights.mean() == pytest.approx(1.0) and weights[0] == pytest.approx(0.5) and weights[-1] == pytest.approx(1.75)
    # 300 of class b's rows are poison the detectors single out: the clean rows are 300 / 400, as held out
    cleaned = holdout_row_weights(batch_codes, hold_codes, 3, np.array([0.0, 300.0, 0.0]))
    assert cleaned[0] == pytest.approx((300 / 700) / 0.6) and cleaned[-1] == pytest.approx((400 / 700) / 0.4)
    # a class the reference lacks is read against every held-out row, so each stands for its share too
    unseen = holdout_row_weights(np.repeat([0, 1, 2], [300, 400, 300]), hold_codes, 3)
    assert unseen[0] == pytest.approx(0.3 / 0.6 + 0.3) and unseen.mean() == pytest.approx(1.0)


@pytest.mark.parametrize("draw", ["normal", "exponential", "standard_t"])
def test_conformal_p_values_are_uniform_for_new_rows_from_the_reference_distribution(draw):
    rng = np.random.default_rng(1)
    sample = {"normal": rng.normal, "exponential": rng.exponential,
              "standard_t": lambda size: rng.standard_t(3, size=size)}[draw]
    hits = {0.01: [], 0.05: [], 0.2: []}
    for _ in range(300):
        p = tail_p_values(sample(size=200), sample(size=2_000))
        for level in hits:
            hits[level].append(np.mean(p <= level))
    for level, shares in hits.items():
        assert np.mean(shares) <= level * 1.15 + 0.001, (draw, level, np.mean(shares))
        assert np.mean(shares) >= level * 0.5, (draw, level, np.mean(shares))


def test_a_held_out_row_is_judged_against_the_others_not_itself():
    scores = np.array([0.1, 0.2, 0.3, 0.4, 10.0])
    p = holdout_p_values(scores, np.full(0, "*", dtype=object))
    assert p[-1] == pytest.approx(1 / 5)  # more extreme than all 4 others: (0 + 1) / (4 + 1), itself left out
    assert np.all((p > 0) & (p <= 1))


def test_with_too_few_held_out_rows_the_threshold_is_labelled_an_estimate():
    _, guarantee = union_threshold(np.random.default_rng(0).uniform(size=50), BUDGET, 3)
    assert guarantee == "estimate"


def test_cross_conformal_p_values_count_each_fold_against_its_own_model():
    from poisonguard.decide.calibration import cross_conformal_p_values

    hold = np.array([1.0, 2.0, 3.0, 10.0, 20.0, 30.0])
    folds = np.array([0, 0, 0, 1, 1, 1])
    # Fold 0's model scores the new row 2.5 (one of its rows is as high), fold 1's 25 (one is as high).
    p = cross_conformal_p_values(hold, folds, np.array([[2.5], [25.0]]))
    assert p[0] == pytest.approx((1 + 1 + 1) / 7)
    # Against the pooled scores, 2.5 would be below four of them: folds are not interchangeable.
    assert tail_p_values(hold, np.array([2.5]))[0] == pytest.approx(5 / 7)


def test_cross_conformal_p_values_are_uniform_for_new_rows_from_the_reference_distribution():
    from poisonguard.decide.calibration import cross_conformal_p_values

    rng = np.random.default_rng(2)
    hits = {0.01: [], 0.05: [], 0.2: []}
    for _ in range(300):
        # Five fold models that differ a little (a shift each), like copies fitted on different folds.
        shift = rng.normal(0, 0.2, size=5)
        folds = np.repeat(np.arange(5), 40)
        hold = rng.standard_t(3, size=200) + shift[folds]
        new = rng.standard_t(3, size=2_000)[np.newaxis, :] + shift[:, np.newaxis] + rng.normal(0, 0.1, (5, 2_000))
        p = cross_conformal_p_values(hold, folds, new)
        for level in hits:
            hits[level].append(np.mean(p <= level))
    for level, shares in hits.items():
        assert np.mean(shares) <= level * 1.15 + 0.001, (level, np.mean(shares))
        assert np.mean(shares) >= level * 0.5, (level, np.mean(shares))


def test_with_too_few_held_out_rows_the_estimate_holds_the_budget_for_one_detector():
    shares, guarantees = zip(*(_false_quarantine(60, 1, seed) for seed in range(300)))
    assert set(guarantees) == {"estimate"}
    assert np.mean(shares) <= BUDGET + 3 * np.std(shares) / np.sqrt(len(shares))


LIGHT_AND_EXPONENTIAL_TAILS = {
    "exponential": lambda rng, n: rng.exponential(size=n),
    "gaussian": lambda rng, n: rng.normal(size=n),
    "gamma(4)": lambda rng, n: rng.gamma(4.0, size=n),
}


@pytest.mark.parametrize("draw", LIGHT_AND_EXPONENTIAL_TAILS.values(), ids=LIGHT_AND_EXPONENTIAL_TAILS.keys())
def test_without_a_reference_the_tail_limit_holds_its_level_for_clean_scores(draw):
    rng = np.random.default_rng(11)
    exceeded = [(draw(rng, 100_000) > tail_limit(draw(rng, 3_000), 0.005, 0.2)).mean() for _ in range(30)]
    assert np.mean(exceeded) <= 0.005 * 1.3  # exact for exponential tails, stricter for lighter ones


def test_poison_at_the_top_of_a_class_only_makes_its_tail_limit_stricter():
    rng = np.random.default_rng(12)
    for _ in range(20):
        clean = rng.normal(size=2_000)
        poisoned = np.concatenate([clean, clean.max() + rng.exponential(size=300)])  # 13% of the rows
        assert tail_limit(poisoned, 0.005, 0.2) >= tail_limit(clean, 0.005, 0.2)


def test_a_discrete_score_flags_at_most_its_level_of_the_rows():
    scores = np.repeat([0.0, 1.0], [990, 10])  # the body's quantiles tie: no tail to fit
    limit = tail_limit(scores, 0.005, 0.2)
    assert (scores > limit).mean() <= 0.005


def test_the_false_quarantine_interval_covers_the_truth_for_exponential_scores_and_bounds_lighter_ones():
    rng = np.random.default_rng(13)
    no_groups = np.full(0, "*", dtype=object)
    for name, draw in LIGHT_AND_EXPONENTIAL_TAILS.items():
        covered, bounded = [], []
        for seed in range(30):
            fit = draw(rng, 3_000)
            limits = {"d": tail_limits(fit, no_groups, 0.005, 0.2)}
            share, low, high = tail_false_quarantine({"d": fit}, no_groups, limits, 0.2, seed)
            truth = (draw(rng, 100_000) > limits["d"]["*"]).mean()
            assert low <= share <= high and share >= 0.004  # the refits' median, at or above the level
            covered.append(low <= truth <= high)
            bounded.append(truth <= high)
        if name == "exponential":
            assert np.mean(covered) >= 0.75  # a 90% interval, over 30 draws
        assert np.mean(bounded) >= 0.85


def _labels_from(probabilities: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One label per row drawn from its row of class probabilities."""
    return (rng.random((len(probabilities), 1)) > np.cumsum(probabilities, axis=1)).sum(axis=1)


def test_a_model_s_own_limit_holds_its_level_when_the_labels_follow_its_probabilities():
    rng = np.random.default_rng(14)
    exceeded, estimates = [], []
    for _ in range(30):
        probabilities = rng.dirichlet(np.full(4, 0.3), size=5_000)  # sure and unsure rows, four classes
        margins = np.log1p(-np.clip(probabilities, 0, 1 - 1e-12)) - np.log(np.clip(probabilities, 1e-12, 1))
        limit = model_limit(margins, probabilities, 0.005)
        given = _labels_from(probabilities, rng)
        exceeded.append((margins[np.arange(len(given)), given] > limit).mean())
        share, low, high = model_false_quarantine(margins, probabilities, limit, seed=0)
        assert low <= share <= high and share <= 0.005
        estimates.append(share)
    assert np.mean(exceeded) <= 0.005 * 1.15 and np.mean(exceeded) >= 0.005 * 0.7
    assert abs(np.mean(exceeded) - np.mean(estimates)) <= 0.001


def test_a_model_s_own_limit_flags_tied_outcomes_all_or_none():
    scores = np.array([[3.0, 0.0], [3.0, 0.0], [1.0, 0.0]])
    chances = np.array([[0.004, 0.996], [0.004, 0.996], [0.5, 0.5]])  # a 3.0 costs 0.13% of the rows, both 0.27%
    assert model_limit(scores, chances, 0.002) == 3.0  # one 3.0 alone would fit, but they tie: neither is flagged
    assert model_limit(scores, chances, 0.003) == 1.0  # both 3.0 flagged
    assert model_limit(scores, chances, 0.2) == 0.0  # and the 1.0 (16.7%)
    assert model_false_quarantine(scores, chances, 1.0, seed=0)[0] == pytest.approx(0.008 / 3)


def test_weight_folds_follow_the_row_id_whatever_rows_come_with_it():
    ids = np.arange(50_000)
    folds = weight_folds(ids, seed=7)
    assert set(np.unique(folds)) == set(range(WEIGHT_FOLDS))
    assert np.bincount(folds).min() > 0.9 * len(ids) / WEIGHT_FOLDS  # dealt evenly
    # a chunk of the batch, in any order, puts each row in the fold the whole batch put it in
    chunk = np.random.default_rng(0).permutation(ids)[:1_000]
    assert np.array_equal(weight_folds(chunk, seed=7), folds[chunk])
    assert not np.array_equal(weight_folds(ids, seed=8), folds)  # another seed deals them anew


def test_a_rows_threshold_is_read_from_the_other_folds_rows_only():
    """The selection the weight folds remove: rows that raise a detector's weight are not judged by it.
    Poison placed in fold 0 alone leaves fold 0's thresholds as a clean batch's and raises the others'."""
    from poisonguard.config import ScanConfig
    from poisonguard.decide.explain import detector_p_threshold
    from poisonguard.featurize.features import infer_kinds
    from poisonguard.score.rows import score_rows

    rng = np.random.default_rng(5)

    def rows(n):
        label = rng.integers(0, 2, n)
        return pd.DataFrame({"x1": rng.normal(label, 1.0), "x2": rng.normal(0.0, 1.0, n),
                             "label": np.where(label == 1, "b", "a")})

    reference, batch = rows(4_000), rows(3_000)
    folds = weight_folds(np.arange(len(batch)), seed=0)
    poisoned = batch.copy()
    poisoned.loc[folds == 0, "x2"] += 6.0  # far out, in fold 0 only
    config = ScanConfig(label_col="label", detectors=("ecod", "label_model"), seed=0)
    kinds = infer_kinds(reference, "label")
    clean, dirty = (score_rows(frame, reference, kinds, "label", config) for frame in (batch, poisoned))

    def thresholds(scores, name):
        return np.broadcast_to(detector_p_threshold(scores.calibration, name, scores.groups), len(batch))

    for name in ("ecod", "label_model"):
        assert np.allclose(thresholds(dirty, name)[folds == 0], thresholds(clean, name)[folds == 0])
    assert thresholds(dirty, "ecod")[folds != 0].min() > 1.5 * thresholds(clean, "ecod")[folds != 0].max()
