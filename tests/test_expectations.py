"""Schema suites: inference from trusted data, JSON round trip, row-level and structural failures."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import STRUCTURAL_BREAKS, make_frame

from poisonguard import ROW_ID
from poisonguard.errors import ConfigError, InputError
from poisonguard.expectations.suite import infer_suite, load_suite, save_suite, suite_kinds
from poisonguard.expectations.validate import SchemaValidator, validate_batch


@pytest.fixture(scope="module")
def validator():
    return SchemaValidator()


@pytest.fixture(scope="module")
def suite():
    return infer_suite(make_frame(500, seed=1), "toy", "label", range_margin=0.1)


def with_ids(frame):
    frame = frame.copy()
    frame.insert(0, ROW_ID, np.arange(len(frame)))
    return frame


def test_inferred_suite_records_kinds_and_survives_a_json_round_trip(tmp_path, suite):
    assert suite_kinds(suite) == {
        "x1": "numeric", "x2": "numeric", "count": "numeric", "colour": "categorical", "label": "categorical"
    }
    loaded = load_suite(save_suite(suite, tmp_path / "toy.json"))
    assert loaded.to_json_dict()["expectations"] == suite.to_json_dict()["expectations"]
    assert loaded.meta["poisonguard"]["label_col"] == "label"


def test_row_level_failures_name_the_failing_rows(validator, suite):
    batch = with_ids(make_frame(100, seed=2))
    batch.loc[3, "x1"] = np.nan
    batch.loc[5, "x2"] = 1e6
    batch.loc[7, "x2"] = np.inf
    batch.loc[9, "colour"] = "purple"
    batch.loc[11, "label"] = "maybe"
    batch.loc[13, "label"] = None
    outcome = validate_batch(batch, suite, "label", validator)
    assert not outcome.rejected
    reasons = {code: ids.tolist() for code, ids in outcome.row_reasons.items()}
    assert reasons == {
        "schema:not_null:x1": [3],
        "schema:range:x2": [5, 7],
        "schema:in_set:colour": [9],
        "schema:in_set:label": [11],
        "schema:not_null:label": [13],
    }


def test_a_few_unparsable_numbers_fail_only_their_rows_and_keep_the_raw_text(validator, suite):
    batch = with_ids(make_frame(100, seed=3)).astype({"x2": object})
    batch.loc[4, "x2"] = "n/a-ish"
    outcome = validate_batch(batch, suite, "label", validator)
    assert outcome.row_reasons["schema:type:x2"].tolist() == [4]
    assert outcome.raw_values == {4: {"x2": "n/a-ish"}}


@pytest.mark.parametrize(("change", "code"), STRUCTURAL_BREAKS)
def test_structural_failures_reject_the_batch(validator, suite, change, code):
    outcome = validate_batch(change(with_ids(make_frame(50, seed=4))), suite, "label", validator)
    assert outcome.rejected
    assert code in [failure.code for failure in outcome.structural]
    assert outcome.frame is None


def test_unknown_label_column_is_an_input_error():
    with pytest.raises(InputError, match="label column 'target' not found"):
        infer_suite(make_frame(20), "toy", "target")


def test_missing_or_broken_suite_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="suite file not found"):
        load_suite(tmp_path / "nope.json")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ConfigError, match="broken.json"):
        load_suite(tmp_path / "broken.json")


def test_vectorised_row_checks_fail_exactly_the_rows_great_expectations_fails(validator):
    import great_expectations.expectations as gxe

    from poisonguard.expectations.row_checks import evaluate, evaluates_here, expectation_key, from_gx_result

    rng = np.random.default_rng(3)
    n_rows = 300
    frame = with_ids(make_frame(n_rows, seed=4))
    frame["x1"] = frame["x1"].where(rng.random(n_rows) > 0.1)  # nulls
    frame.loc[[3, 7], "x2"] = [np.inf, -np.inf]
    frame["count"] = frame["count"].astype("int64")
    frame["colour"] = frame["colour"].astype(object).where(rng.random(n_rows) > 0.1, None)
    frame.loc[5, "colour"] = "purple"
    frame["mixed"] = pd.Series(["a", 1, None, "b"] * (n_rows // 4), dtype=object)
    expectations = [
        gxe.ExpectColumnValuesToNotBeNull(column="x1"),
        gxe.ExpectColumnValuesToNotBeNull(column="colour"),
        gxe.ExpectColumnValuesToBeBetween(column="x1", min_value=-1.0, max_value=1.5),
        gxe.ExpectColumnValuesToBeBetween(column="x2", min_value=-1.0, max_value=1.0),
        gxe.ExpectColumnValuesToBeBetween(column="x2", min_value=0.0),
        gxe.ExpectColumnValuesToBeBetween(column="count", min_value=3, max_value=15, strict_min=True, strict_max=True),
        gxe.ExpectColumnValuesToBeInSet(column="colour", value_set=["red", "green", "blue"]),
        gxe.ExpectColumnValuesToBeInSet(column="count", value_set=[1, 2, 3, 4]),
        gxe.ExpectColumnValuesToBeInTypeList(column="mixed", type_list=["str"]),
        gxe.ExpectColumnValuesToBeInTypeList(column="x2", type_list=["int64", "float64"]),
    ]
    gx_results = {expectation_key(r.expectation_config.type, r.expectation_config.kwargs): r
                  for r in validator.run(frame, expectations)}
    assert len(gx_results) == len(expectations)
    for expectation in expectations:
        assert evaluates_here(expectation, frame), expectation
        ours = evaluate(expectation, frame)
        key = expectation_key(expectation.expectation_type, expectation.configuration.kwargs)
        theirs = from_gx_result(gx_results[key])
        assert sorted(ours.failing.tolist()) == sorted(theirs.failing.tolist()), expectation
        assert ours.success == theirs.success, expectation
    assert not evaluates_here(gxe.ExpectColumnValuesToBeBetween(column="x1", min_value=0, mostly=0.9), frame)


def test_an_expectation_only_great_expectations_understands_is_run_by_it_in_suite_order(validator):
    import great_expectations.expectations as gxe

    from poisonguard.expectations.row_checks import run_row_checks

    frame = with_ids(pd.DataFrame({"x": [0.0, 5.0, 0.5, 0.2]}))
    expectations = [
        gxe.ExpectColumnValuesToBeBetween(column="x", min_value=0, max_value=1, mostly=0.5),  # GX: forgiven
        gxe.ExpectColumnValuesToBeBetween(column="x", min_value=0, max_value=1),
    ]
    delegated = []

    def run_in_gx(frame, expectations):
        delegated.extend(expectations)
        return validator.run(frame, expectations)

    forgiven, strict = run_row_checks(expectations, frame, run_in_gx)
    assert delegated == expectations[:1]
    assert forgiven.success and len(forgiven.failing) == 0 and forgiven.unexpected_count == 1
    assert not strict.success and strict.failing.tolist() == [1]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ranges_over_many_columns_keep_clean_rows_within_their_share(seed):
    from poisonguard.expectations.ranges import range_bounds

    rng = np.random.default_rng(seed)
    columns, share = 300, 0.01
    for draw in (rng.normal, rng.laplace):  # tails no heavier than exponential: the share holds
        reference, fresh = draw(size=(400, columns)), draw(size=(4000, columns))
        bounds = np.array([range_bounds(reference[:, j], columns, share, 0.1) for j in range(columns)])
        failing = ((fresh < bounds[:, 0]) | (fresh > bounds[:, 1])).any(axis=1).mean()
        observed = np.array([range_bounds(reference[:, j], columns, None, 0.1) for j in range(columns)])
        failing_observed = ((fresh < observed[:, 0]) | (fresh > observed[:, 1])).any(axis=1).mean()
        assert failing <= 2 * share, (draw.__name__, failing)
        assert failing_observed > 10 * share  # the observed-range rule this replaces
    # still a range: a value far outside the reference fails it
    low, high = range_bounds(rng.normal(size=400), columns, share, 0.1)
    assert -20 < low < -3 and 3 < high < 20


def test_a_range_is_never_narrower_than_the_observed_range_plus_margin():
    from poisonguard.expectations.ranges import range_bounds

    values = np.array([1.0] * 300 + [2.0])
    assert range_bounds(values, 1, 0.01, 0.1) == (0.9, 2.1)
    assert range_bounds(np.array([5.0]), 10, 0.01, 0.1) == (4.5, 5.5)


def test_a_column_constant_in_the_reference_gets_no_range_and_says_why(validator):
    from poisonguard.expectations.suite import suite_unchecked

    rng = np.random.default_rng(3)
    n = 400
    reference = pd.DataFrame({
        "border_pixel": np.zeros(n),  # always 0 in the reference, like a digit's border
        "rare_ink": np.r_[np.zeros(n - 4), [1.0, 3.0, 7.0, 16.0]],  # near-constant: a few singletons
        "signal": rng.normal(size=n),
        "spike": np.r_[rng.normal(size=n - 1), [60.0]],  # one value far past what the others' tail allows
        "colour": rng.choice(["red", "green", "blue"], n),
        "shade": np.r_[rng.choice(["light", "dark"], n - 6), [f"rare{i}" for i in range(6)]],
        "label": rng.choice(["a", "b"], n),
    })
    suite = infer_suite(reference, "pixels", "label", range_false_quarantine=0.001)
    unchecked = suite_unchecked(suite)
    assert set(unchecked) == {"border_pixel", "rare_ink", "spike", "shade", "colour"}
    assert "constant in the reference (0)" in unchecked["border_pixel"]
    assert "near-constant in the reference: 4 of its 400 values differ from 0" in unchecked["rare_ink"]
    assert "largest reference value (60) lies outside the range the other values give" in unchecked["spike"]
    assert "6 of its 400 reference values occur once" in unchecked["shade"]
    assert "0 of its 400 reference values occur once: up to about 0.25%" in unchecked["colour"]
    ranged = {e.column for e in suite.expectations if e.expectation_type == "expect_column_values_to_be_between"}
    valued = {e.column for e in suite.expectations if e.expectation_type == "expect_column_values_to_be_in_set"}
    assert ranged == {"signal"} and valued == {"label"}  # the label's set is never given up

    batch = reference.head(3).copy()
    batch["border_pixel"] = [0.0, 5.0, 16.0]  # ink where the reference had none: no range to fail
    batch["shade"] = ["light", "new shade", "dark"]
    batch.loc[2, "signal"] = 1e6  # a value far outside a column that has a range still fails it
    batch.loc[0, "label"] = "z"  # and a label outside the label set always fails
    outcome = validate_batch(with_ids(batch), suite, "label", validator)
    assert outcome.row_reasons.keys() == {"schema:range:signal", "schema:in_set:label"}
    assert outcome.row_reasons["schema:range:signal"].tolist() == [2]
    assert outcome.row_reasons["schema:in_set:label"].tolist() == [0]


@pytest.mark.parametrize(("reference_rows", "enforced"), [(400, False), (6_000, True)])
def test_an_allowed_value_set_needs_enough_reference_rows_to_stay_in_budget(reference_rows, enforced):
    from poisonguard.expectations.suite import suite_unchecked

    rng = np.random.default_rng(4)
    reference = pd.DataFrame({"colour": rng.choice(["red", "green", "blue"], reference_rows),
                              "label": rng.choice(["a", "b"], reference_rows)})
    # One unseen value among the reference and a new row: a conformal p-value of 1 / (rows + 1), which must
    # be within the column's share of the budget (0.1% here, one judged column) before the set is enforced.
    suite = infer_suite(reference, "colours", "label", range_false_quarantine=0.001)
    valued = {e.column for e in suite.expectations if e.expectation_type == "expect_column_values_to_be_in_set"}
    assert ("colour" in valued) is enforced
    assert ("colour" in suite_unchecked(suite)) is not enforced


def test_csv_text_of_booleans_and_times_gets_kinds_of_its_own_and_bad_cells_fail_their_row(validator):
    import io

    frame = make_frame(300, seed=3).assign(
        member=np.resize(["True", "False"], 300),
        seen_at=pd.date_range("2026-01-01", periods=300, freq="h", tz="Europe/Oslo").astype(str),
        day=pd.date_range("2025-01-01", periods=300, freq="D").strftime("%Y-%m-%d"),
        visits=np.resize([1.0, 2.0, np.nan], 300),
        code=np.resize(["yes", "no"], 300),
    )
    reference = pd.read_csv(io.StringIO(frame.to_csv(index=False)))  # as a CSV reference arrives: text
    suite = infer_suite(reference, "typed", "label")
    kinds = suite_kinds(suite)
    assert [kinds[c] for c in ("member", "seen_at", "day", "visits", "code")] == \
        ["boolean", "datetime", "datetime", "numeric", "categorical"]
    types = {e.column: e.meta for e in suite.expectations if e.expectation_type.endswith("in_type_list")}
    assert types["seen_at"]["timezone"] == "UTC" and types["day"]["date_only"] is True
    assert types["visits"]["integer"] is True and types["x1"]["integer"] is False

    batch = with_ids(reference.head(50)).astype({"member": object})
    batch.loc[2, "seen_at"] = "yesterday"
    batch.loc[3, "member"] = "perhaps"
    batch.loc[4, "day"] = "2025-03-01T10:30:00"  # a time in a column of dates
    batch.loc[5, "visits"] = 1.5  # not a whole number
    outcome = validate_batch(batch, suite, "label", validator)
    assert not outcome.rejected
    assert {code: ids.tolist() for code, ids in outcome.row_reasons.items() if code.startswith("schema:type")} == {
        "schema:type:seen_at": [2], "schema:type:member": [3], "schema:type:day": [4], "schema:type:visits": [5]}
    assert outcome.raw_values[2] == {"seen_at": "yesterday"} and outcome.raw_values[5] == {"visits": "1.5"}
    checked = outcome.frame
    assert str(checked["seen_at"].dtype) == "datetime64[ns, UTC]" and str(checked["member"].dtype) == "boolean"
    assert checked.loc[0, "seen_at"] == pd.Timestamp("2025-12-31 23:00", tz="UTC")  # 00:00 in Oslo
