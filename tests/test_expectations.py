"""Schema suites: inference from trusted data, JSON round trip, row-level and structural failures."""

from __future__ import annotations

import numpy as np
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
