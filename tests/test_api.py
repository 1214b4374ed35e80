"""``poisonguard.scan``: DataFrames in and out, in process, deciding what the command line decides."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import poisonguard
from poisonguard import REASONS, ROW_ID
from poisonguard.errors import ConfigError, InputError


@pytest.fixture(scope="module")
def loans(sample_batch, sample_reference) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The bundled sample as DataFrames, the batch indexed by a key of its own as a user's would be."""
    batch = pd.read_csv(sample_batch)
    batch.index = pd.Index([f"loan-{i:05d}" for i in range(len(batch))], name="loan_id")
    return batch, pd.read_csv(sample_reference)


@pytest.fixture(scope="module")
def scanned_frame(loans):
    batch, reference = loans
    return poisonguard.scan(batch, label="risk_grade", reference=reference, dataset="loans")


def test_a_dataframe_comes_back_as_clean_and_quarantined_rows_with_the_callers_index(loans, scanned_frame):
    batch, _ = loans
    result = scanned_frame
    assert len(result.clean) + len(result.quarantined) == len(batch)
    assert result.clean.index.intersection(result.quarantined.index).empty
    assert result.clean.index.union(result.quarantined.index).sort_values().equals(batch.index.sort_values())
    pd.testing.assert_frame_equal(result.clean, batch.loc[result.clean.index])  # rows and types as given
    assert result.quarantined[REASONS].map(len).gt(0).all()
    assert result.issues.index.equals(batch.index)
    assert result.issues["quarantined"].sum() == len(result.quarantined) > 0
    for name in result.report["detectors"]:
        assert {f"{name}_score", f"{name}_flag", f"{name}_pvalue"} <= set(result.issues.columns)
    assert result.summary()["rows"] == {"in": len(batch), "clean": len(result.clean),
                                        "quarantined": len(result.quarantined)}
    assert "quarantined" in repr(result) and "<table" in result._repr_html_()


def test_the_in_process_scan_decides_the_rows_the_flow_decides(scanned_sample, sample_batch, sample_reference):
    summary, out_dir = scanned_sample
    flow_held = pq.read_table(out_dir / "quarantine" / "loans" / f"{summary.batch_id}.parquet").column(ROW_ID)
    result = poisonguard.scan(sample_batch, label="risk_grade", reference=sample_reference, dataset="loans")
    in_process = np.flatnonzero(result.issues["quarantined"].to_numpy())
    assert sorted(flow_held.to_pylist()) == in_process.tolist()
    assert result.summary()["reasons"] == summary.reasons


def test_nothing_is_written_until_saved_and_save_writes_what_the_command_line_writes(loans, scanned_frame, tmp_path,
                                                                                      monkeypatch):
    monkeypatch.chdir(tmp_path)
    batch, _ = loans
    poisonguard.scan(batch.head(400), label="risk_grade")
    assert list(tmp_path.iterdir()) == []
    report_path = scanned_frame.save(tmp_path / "out")
    report = json.loads(report_path.read_text())
    assert report["rows"] == scanned_frame.report["rows"] and report["reasons"] == scanned_frame.report["reasons"]
    held = pq.read_table(tmp_path / "out" / report["outputs"]["quarantine"]).column(ROW_ID).to_pylist()
    assert sorted(held) == np.flatnonzero(scanned_frame.issues["quarantined"].to_numpy()).tolist()
    assert (tmp_path / "out" / report["outputs"]["clean"]).is_file()


def test_an_arrow_table_and_a_file_scan_like_the_frame(loans, sample_batch):
    batch, _ = loans
    from_frame = poisonguard.scan(batch.reset_index(drop=True), label="risk_grade")
    from_table = poisonguard.scan(pa.Table.from_pandas(batch, preserve_index=False), label="risk_grade")
    from_file = poisonguard.scan(sample_batch, label="risk_grade")
    for result in (from_table, from_file):
        assert result.issues.index.equals(pd.RangeIndex(len(batch)))
        assert result.issues["quarantined"].tolist() == from_frame.issues["quarantined"].tolist()


def test_mistakes_are_named_before_anything_is_scanned(loans):
    batch, _ = loans
    with pytest.raises(ConfigError, match="did you mean 'risk_grade'"):
        poisonguard.scan(batch, label="risk_grad")
    with pytest.raises(ConfigError, match=r"\.save\(out_dir\)"):
        poisonguard.scan(batch, out_dir="somewhere")
    with pytest.raises(ConfigError, match="max_false_quarantine"):
        poisonguard.scan(batch, max_false_quarantine="1%")
    with pytest.raises(InputError, match="expected a pandas DataFrame"):
        poisonguard.scan(batch.to_dict(), label="risk_grade")
    with pytest.raises(InputError, match="'_row_id' is a name poisonguard writes"):
        poisonguard.scan(batch.assign(_row_id=1))
    with pytest.raises(InputError, match="reference: .* is not a file"):
        poisonguard.scan(batch, reference="no/such/reference.csv")


def test_scanning_a_frame_starts_no_prefect(sample_batch):
    code = ("import sys, pandas as pd, poisonguard; "
            f"poisonguard.scan(pd.read_csv({str(sample_batch)!r}).head(300), label='risk_grade'); "
            "print(any(name.split('.')[0] == 'prefect' for name in sys.modules))")
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert found.returncode == 0, found.stderr[-2000:]
    assert found.stdout.strip().splitlines()[-1] == "False"


def test_every_quarantined_row_says_why_in_words(scanned_frame):
    issues = scanned_frame.issues
    held = issues["quarantined"].to_numpy()
    assert (issues["explanation"][held] != "").all() and (issues["explanation"][~held] == "").all()
    ranged = issues[issues["reasons"].map(lambda codes: "schema:range:applicant_age" in codes)]
    assert len(ranged) and ranged["explanation"].str.contains(r"applicant_age = \S+ outside \[").all()
    labelled = issues[issues["reasons"].map(lambda codes: "label:label_model" in codes)]
    assert labelled["explanation"].str.contains(r"label_model: p = \S+ \(flagged at p <= ").all()


def test_an_explanation_gives_each_reason_in_its_order_with_the_value_and_the_rule():
    from poisonguard.decide.explain import explain_rows

    rows = pd.DataFrame({"age": [150.0, 30.0, np.nan], "city": ["x", "Oslo", "Rome"]}, index=[5, 5, 9])
    reasons = pd.Series([["schema:range:age", "label:label_model"], [], ["schema:not_null:age", "backdoor:tv"]],
                        index=rows.index)
    scores = pd.DataFrame({"label_model_score": [3.0, 0.1, 0.2], "label_model_pvalue": [1e-4, 0.5, 0.4],
                           "tv_score": [0.0, 0.0, 0.8], "tv_pvalue": [1.0, 1.0, 0.02]})
    expectations = [{"expectation": "expect_column_values_to_be_between", "column": "age",
                     "kwargs": {"min_value": 18, "max_value": 95}}]
    calibration = {"p_value_threshold": 0.001, "own_thresholds": {"tv": 0.5}}
    text = explain_rows(rows, reasons, scores, expectations, calibration)
    assert text.index.equals(rows.index)
    assert text.tolist() == [
        "age = 150 outside [18, 95]; label_model: p = 0.0001 (flagged at p <= 0.001)",
        "",
        "age is empty; tv: score 0.8 above its own threshold 0.5",
    ]


def test_an_explanation_gives_the_threshold_of_the_rows_class():
    from poisonguard.decide.explain import detector_p_thresholds, explain_rows

    rows = pd.DataFrame({"label": ["cat", "dog"]})
    reasons = pd.Series([["label:label_model"], ["label:label_model"]])
    scores = pd.DataFrame({"label_model_score": [3.0, 2.0], "label_model_pvalue": [0.002, 0.0001]})
    calibration = {"p_value_threshold": 0.001, "detector_weights": {"label_model": 1.0},
                   "class_weights": {"classes": ["cat", "dog", "*"], "weights": {"label_model": [4.0, 0.25, 0.25]}}}
    text = explain_rows(rows, reasons, scores, [], calibration, groups=np.array([0, 1]))
    assert text.tolist() == ["label_model: p = 0.002 (flagged at p <= 0.004)",
                             "label_model: p = 0.0001 (flagged at p <= 0.00025)"]
    assert detector_p_thresholds(calibration, ["label_model"]) == {"label_model": "0.00025-0.004 by class"}
    # weights by weight fold and class (fold-major): the rows' codes say both, and they set the threshold
    calibration["row_weights"] = {"folds": 2, "classes": 3,
                                  "weights": {"label_model": [4.0, 0.25, 0.25, 3.0, 0.5, 0.5]}}
    text = explain_rows(rows, reasons, scores, [], calibration, groups=np.array([3, 4]))
    assert text.tolist() == ["label_model: p = 0.002 (flagged at p <= 0.003)",
                             "label_model: p = 0.0001 (flagged at p <= 0.0005)"]
    assert detector_p_thresholds(calibration, ["label_model"]) == {"label_model": "0.00025-0.004 by row"}


def customers(n_rows: int, seed: int) -> pd.DataFrame:
    """A notebook's frame: an id, numbers, a category, a boolean, a zoned timestamp, free text, a text label."""
    rng = np.random.default_rng(seed)
    spend, visits = rng.normal(0, 1, n_rows), rng.normal(0, 1, n_rows)
    return pd.DataFrame({
        "customer_id": [f"C{seed}-{i:06d}" for i in range(n_rows)],
        "spend": spend * 40 + 200,
        "visits": np.round(visits * 3 + 10),
        "region": pd.Categorical(rng.choice(["north", "south", "east", "west"], n_rows)),
        "is_member": rng.random(n_rows) < 0.4,
        "signed_up": pd.Timestamp("2024-01-01", tz="UTC") + pd.to_timedelta(rng.integers(0, 700, n_rows), unit="D"),
        "note": rng.choice(["called about delivery", "asked for a refund", "happy with the order",
                            "wants a new address", "no comment"], n_rows),
        "segment": np.where(spend + visits > 0, "gold", "basic"),
    })


@pytest.mark.parametrize("seed", [2, 3])
def test_a_notebook_frame_of_every_kind_is_scanned_in_memory_and_a_flip_names_the_expected_label(seed, tmp_path,
                                                                                                 monkeypatch):
    monkeypatch.chdir(tmp_path)
    reference, batch = customers(2000, 1), customers(1000, seed)
    batch.index = pd.Index([f"row-{i}" for i in range(len(batch))], name="key")
    margin = (batch["spend"] - 200) / 40 + (batch["visits"] - 10) / 3
    flipped = batch.index[np.abs(margin) > 1.0][:30]  # clearly on one side: a model is sure of the other label
    truth = batch.loc[flipped, "segment"].copy()
    batch.loc[flipped, "segment"] = np.where(truth == "gold", "basic", "gold")

    result = poisonguard.scan(batch, label="segment", reference=reference, id_col="customer_id")

    assert list(tmp_path.iterdir()) == []
    assert result.clean.dtypes.equals(batch.dtypes)
    pd.testing.assert_frame_equal(result.clean, batch.loc[result.clean.index])
    assert len(result.quarantined.index.intersection(flipped)) >= 27
    assert len(result.quarantined) <= 30 + 0.02 * len(batch)
    by_label = result.issues.loc[flipped][result.issues.loc[flipped, "label_model_flag"]]
    assert len(by_label) >= 27
    for key, row in by_label.iterrows():
        assert row["label_model_predicted"] == truth[key]
        assert f"expected '{truth[key]}' (probability " in row["explanation"]



@pytest.mark.parametrize("seed", [4, 5])
def test_an_outlier_flag_names_the_columns_that_made_the_row_unusual(seed):
    reference, batch = customers(2000, 1), customers(500, seed)
    odd = batch.index[:5]  # each value within the reference's range, together far from every customer
    batch.loc[odd, ["spend", "visits", "segment"]] = [440.0, 0.0, "gold"]
    result = poisonguard.scan(batch, label="segment", reference=reference, id_col="customer_id")
    flagged = result.issues.loc[odd]
    assert flagged["ecod_flag"].sum() >= 4
    named = flagged.loc[flagged["ecod_flag"], "ecod_features"]
    assert all(set(columns[:2]) == {"spend", "visits"} for columns in named)
    assert flagged.loc[flagged["ecod_flag"], "explanation"].str.contains("most unusual: spend = 440, visits = 0").all()
    assert result.issues.loc[~result.issues["ecod_flag"], "ecod_features"].isna().all()
