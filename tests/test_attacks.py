"""The benchmark's attack generators, and poisonguard catching them on scikit-learn's digits."""

from __future__ import annotations

import pytest

from benchmarks import attacks
from benchmarks.detection import evaluate


@pytest.fixture(scope="module")
def digits():
    return attacks.load_dataset("digits", seed=0)


def test_attacks_are_deterministic_and_leave_the_input_alone(digits):
    before = digits.copy()
    first = attacks.random_flips(digits, 0.1, seed=3)
    second = attacks.random_flips(digits, 0.1, seed=3)
    assert first.frame.equals(second.frame) and (first.mask == second.mask).all()
    assert digits.equals(before)
    assert first.mask.sum() == round(0.1 * len(digits))
    assert (first.frame.loc[first.mask, "label"] != digits.loc[first.mask, "label"]).all()


def test_badnets_sets_the_trigger_and_relabels_to_the_target(digits):
    trigger = attacks.digits_corner_trigger()
    poisoned = attacks.backdoor(digits, 0.05, trigger, "0", seed=1)
    rows = poisoned.frame[poisoned.mask]
    assert (rows["label"] == "0").all() and (digits.loc[poisoned.mask, "label"] != "0").all()
    assert (rows[list(trigger)] == 16.0).all().all()
    clean_label = attacks.backdoor(digits, 0.05, trigger, "0", seed=1, relabel=False)
    assert (clean_label.frame.loc[clean_label.mask, "label"] == "0").all()


def test_duplicate_replays_append_copies_with_another_label(digits):
    poisoned = attacks.duplicate_replay(digits, 0.05, seed=0)
    assert len(poisoned.frame) == len(digits) + poisoned.mask.sum()
    assert not poisoned.mask[: len(digits)].any()


def test_backdoored_digits_are_quarantined_given_a_trusted_reference(digits):
    half = len(digits) // 2
    reference, batch = digits.iloc[:half].reset_index(drop=True), digits.iloc[half:].reset_index(drop=True)
    poisoned = attacks.backdoor(batch, 0.05, attacks.digits_corner_trigger(), "0", seed=0)
    result = evaluate(poisoned.frame, poisoned.mask, reference, ("ecod", "iforest", "label_model"), seed=0)
    assert result["recall"] >= 0.9
    assert result["false_quarantine"] <= 0.01


def test_photo_patches_cut_each_photograph_into_the_asked_bands():
    four = attacks.photo_patches(seed=0, n_rows=400)
    assert set(four["label"]) == {"china_top", "china_bottom", "flower_top", "flower_bottom"}
    ten = attacks.photo_patches(seed=0, n_rows=2_000, bands=5)
    assert set(ten["label"]) == {f"{photo}_{band}" for photo in ("china", "flower") for band in range(5)}
    pixels = ten.drop(columns="label")
    assert pixels.shape[1] == 64 and pixels.to_numpy().min() >= 0 and pixels.to_numpy().max() <= 255
    # a band is a region of the photograph: its patches differ from another band's on average
    means = pixels.mean(axis=1).groupby(ten["label"]).mean()
    assert means.max() - means.min() > 10
