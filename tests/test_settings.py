"""Settings in groups: flat keys and group tables mean the same scan; errors name the group and key."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from poisonguard.config import GROUP_OF, GROUPS, ScanConfig
from poisonguard.config_file import config_from_mapping, load_config
from poisonguard.errors import ConfigError


def test_a_group_table_and_flat_keys_give_the_same_settings(tmp_path):
    (tmp_path / "flat.toml").write_text(textwrap.dedent("""
        [scan]
        label_col = "label"
        reference = "ref.csv"
        max_false_quarantine = 0.02
        batch_poison_share = 0.1
        range_margin = 0.2
        task_runner = "dask"
        detectors = ["ecod", "iforest"]
    """))
    (tmp_path / "grouped.toml").write_text(textwrap.dedent("""
        [scan.io]
        label_col = "label"
        reference = "ref.csv"
        [scan.calibration]
        max_false_quarantine = 0.02
        batch_poison_share = 0.1
        [scan.expectations]
        range_margin = 0.2
        [scan.execution]
        task_runner = "dask"
        [scan.detection]
        detectors = ["ecod", "iforest"]
    """))
    flat, grouped = load_config(tmp_path / "flat.toml"), load_config(tmp_path / "grouped.toml")
    assert flat == grouped
    assert grouped.calibration.max_false_quarantine == 0.02
    assert grouped.io.reference == (tmp_path / "ref.csv").resolve()  # relative to the file, inside a group too
    assert grouped.detection.detectors == ("ecod", "iforest")


def test_every_setting_has_one_group_and_a_unique_name():
    names = [name for model in GROUPS.values() for name in model.model_fields]
    assert len(names) == len(set(names)) == len(GROUP_OF)
    assert not set(names) & set(ScanConfig.model_fields)  # a flat key can never mean two things


def test_flat_keywords_in_python_are_shorthand_for_their_group():
    config = ScanConfig(label_col="y", max_false_quarantine=0.05, task_runner="dask", seed=3)
    assert (config.io.label_col, config.calibration.max_false_quarantine, config.execution.task_runner) == (
        "y", 0.05, "dask")
    changed = config.with_overrides(calibration={"batch_poison_share": 0.3})
    assert changed.calibration.batch_poison_share == 0.3
    assert changed.calibration.max_false_quarantine == 0.05  # merged into the group, not replacing it


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('[scan.calibration]\nbatch_poison_share = "high"\n',
         "calibration.batch_poison_share: input should be a valid number, got str 'high'"),
        ("[scan.calibration]\nrobust = 4.0\n", "unknown key(s) in [scan]: calibration.robust"),
        ('[scan]\ncalibration = "strict"\n', "[scan.calibration] must be a table"),
        ("[scan.io]\nchunk_rows = 0\n", "chunk_rows must be at least 1, got 0"),
        ("[scan]\nmax_false_quarantne = 0.01\n[scan.calibration]\nholdout_fracton = 0.3\n",
         "unknown key(s) in [scan]: max_false_quarantne (did you mean max_false_quarantine?), "
         "calibration.holdout_fracton (did you mean holdout_fraction?)"),
        ("[scan]\nmax_false_quarantine = 1\n", "max_false_quarantine is a share of clean rows, between 0 and 0.5 "
         "(1% is 0.01), got 1.0"),
    ],
)
def test_a_wrong_value_in_a_group_names_the_group_and_key(tmp_path, content, message):
    (tmp_path / "scan.toml").write_text(content)
    with pytest.raises(ConfigError) as raised:
        load_config(tmp_path / "scan.toml")
    assert message in str(raised.value)
    assert str(tmp_path / "scan.toml") in str(raised.value)


def test_a_setting_given_both_flat_and_in_its_group_is_refused():
    with pytest.raises(ConfigError, match="batch_poison_share: given both on its own and in calibration"):
        config_from_mapping({"batch_poison_share": 0.1, "calibration": {"batch_poison_share": 0.3}})


def test_grouping_leaves_the_scan_fingerprint_as_it_was():
    """Ledgers written before settings were grouped still recognise an already-scanned batch."""
    fields = ScanConfig(label_col="y").fingerprint_fields()
    assert sorted(fields) == sorted([
        "label_col", "dataset", "detectors", "max_false_quarantine", "holdout_fraction", "calibration_folds",
        "max_reference_rows", "batch_poison_share", "min_class_rows", "range_margin", "range_false_quarantine", "seed",
        "embedding_prefix", "embedding_column", "chunk_rows",
    ])
    assert "task_runner" not in ScanConfig(task_runner="dask").fingerprint_fields()
    assert ScanConfig(label_col="y", id_col="key").fingerprint_fields()["id_col"] == "key"
    assert Path(ScanConfig(out_dir="elsewhere").ledger_path) == Path("elsewhere/ledger.sqlite")
