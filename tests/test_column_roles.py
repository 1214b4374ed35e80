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
