"""Column roles: an id column and ignored columns are carried through, never features, never range-checked."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import make_frame

from poisonguard import REASONS, ROW_ID
from poisonguard.config import ScanConfig
from poisonguard.errors import ConfigError, InputError
from poisonguard.pipeline.steps import scan_file
from poisonguard.write.outputs import OutputPaths


def with_keys(frame: pd.DataFrame, first_id: int) -> pd.DataFrame:
    """``frame`` with increasing patient ids from ``first_id`` and a free-text note nobody should judge."""
    return frame.assign(patient_id=np.arange(first_id, first_id + len(frame)),
                        note=[f"visit {i}" for i in range(len(frame))])


@pytest.fixture()
def batches(tmp_path):
    with_keys(make_frame(600, seed=0), 1_000).to_csv(tmp_path / "ref.csv", index=False)
    with_keys(make_frame(300, seed=1), 50_000).to_csv(tmp_path / "batch.csv", index=False)  # new patients
    return tmp_path


def scan(folder, out: str, **roles):
    config = ScanConfig(label_col="label", reference=folder / "ref.csv", out_dir=folder / out,
                        suite_dir=folder / "no-suites", **roles)
    summary = scan_file(folder / "batch.csv", config)
    paths = OutputPaths.for_batch(folder / out, summary.dataset, summary.batch_id)
    held = pd.read_parquet(paths.quarantine) if paths.quarantine.exists() else pd.DataFrame({REASONS: []})
    return summary, pd.read_parquet(paths.clean), held


def test_new_ids_are_not_outliers_once_the_id_column_is_named(batches):
    unnamed, _, held = scan(batches, "unnamed")
    assert unnamed.reasons.get("schema:range:patient_id") == 300  # every new patient is "out of range"
    named, clean, held = scan(batches, "named", id_col="patient_id", ignore_cols=("note",))
    assert not any("patient_id" in code or "note" in code for code in named.reasons)
    assert named.rows_quarantined < 30
    kept = pd.concat([clean, held]).sort_values(ROW_ID)
    assert kept["patient_id"].tolist() == list(range(50_000, 50_300))  # carried through, in every row


def test_a_column_with_a_role_is_never_a_feature(batches):
    from poisonguard.ingest.read import read_batch
    from poisonguard.pipeline.plan import plan_scan

    config = ScanConfig(label_col="label", reference=batches / "ref.csv", suite_dir=batches / "no-suites",
                        id_col="patient_id", ignore_cols=("note",))
    scan_plan = plan_scan(read_batch(batches / "batch.csv"), config)
    assert "patient_id" not in scan_plan.kinds and "note" not in scan_plan.kinds
    assert {"x1", "x2"} <= set(scan_plan.kinds)
    assert scan_plan.suite.meta["poisonguard"]["roles"] == {"note": "ignored", "patient_id": "id"}


def test_a_mistyped_or_doubled_role_is_named(batches):
    with pytest.raises(InputError, match="id column 'patient' not found; did you mean 'patient_id'"):
        scan(batches, "out", id_col="patient")
    with pytest.raises(ConfigError, match="two roles"):
        ScanConfig(label_col="label", ignore_cols=("label",))


def test_review_show_lists_the_id_beside_the_row(batches):
    from typer.testing import CliRunner

    from poisonguard.cli import app

    summary, _, held = scan(batches, "named", id_col="patient_id", ignore_cols=("note",))
    assert len(held), "the planted rows of make_frame are quarantined"
    shown = CliRunner().invoke(app, ["review", "show", summary.batch_id, "--out", str(batches / "named")],
                               env={"COLUMNS": "300"})
    assert shown.exit_code == 0, shown.output
    assert "patient_id" in shown.output and str(held["patient_id"].iloc[0]) in shown.output


def test_a_numeric_code_named_categorical_gets_a_value_set_and_is_one_hot(tmp_path):
    from poisonguard.expectations.suite import infer_suite, suite_given_kinds, suite_kinds

    rng = np.random.default_rng(7)
    # Enough reference rows that a value set can be promised within the schema budget (see ranges.py).
    reference = make_frame(6_000, seed=0).assign(store=rng.choice([101, 102, 205, 307], 6_000))
    batch = make_frame(300, seed=1).assign(store=rng.choice([101, 102, 205, 307], 300))
    batch.loc[:4, "store"] = 999  # a store that does not exist: in range for a number, unseen as a code
    reference.to_csv(tmp_path / "ref.csv", index=False)
    batch.to_csv(tmp_path / "batch.csv", index=False)

    suite = infer_suite(reference, "shops", "label", kinds={"store": "categorical", "count": "text"})
    assert suite_kinds(suite)["store"] == "categorical" and suite_kinds(suite)["count"] == "text"
    assert suite_given_kinds(suite) == {"store": "categorical", "count": "text"}
    in_set = [e for e in suite.expectations if e.expectation_type.endswith("in_set") and e.column == "store"]
    assert in_set and sorted(in_set[0].value_set) == ["101", "102", "205", "307"]

    summary, _, held = scan(tmp_path, "coded", categorical_cols=["store"])
    assert summary.reasons.get("schema:in_set:store") == 5
    assert set(held.loc[held[REASONS].map(lambda c: "schema:in_set:store" in c), ROW_ID]) == set(range(5))
    unnamed, _, _ = scan(tmp_path, "plain")
    assert "schema:in_set:store" not in unnamed.reasons


def test_a_kind_the_stored_suite_records_otherwise_is_refused_with_how_to_rebuild(batches):
    from poisonguard.expectations.suite import infer_suite, save_suite

    reference = pd.read_csv(batches / "ref.csv")
    save_suite(infer_suite(reference, "batch", "label"), batches / "suites" / "batch.json")
    config = ScanConfig(label_col="label", reference=batches / "ref.csv", out_dir=batches / "out",
                        suite_dir=batches / "suites", categorical_cols=["count"])
    with pytest.raises(ConfigError, match=r"records column 'count' as numeric.*--categorical-cols count --force"):
        scan_file(batches / "batch.csv", config)
    with pytest.raises(ConfigError, match="given a kind .* twice, or a kind and a role"):
        ScanConfig(label_col="label", categorical_cols=["count"], text_cols=["count"])
    with pytest.raises(InputError, match="categorical column 'stor' not found"):
        scan(batches, "typo", categorical_cols=["stor"])
