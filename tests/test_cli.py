"""The command line: the sample scan, exit codes, one-line errors and suite initialisation."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest
from conftest import make_frame
from typer.testing import CliRunner

from poisonguard.cli import app

runner = CliRunner()


@pytest.mark.usefixtures("prefect_harness")
def test_scanning_the_sample_prints_the_summary_and_exits_1_when_rows_are_quarantined(
    tmp_path, sample_batch, sample_reference
):
    args = ["scan", str(sample_batch), "--dataset", "loans", "--label-col", "risk_grade"]
    args += ["--reference", str(sample_reference), "--out", str(tmp_path)]
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    assert "rows quarantined" in result.output and "2,000" in result.output
    assert "schema:not_null:annual_income" in result.output
    as_json = runner.invoke(app, [*args, "--json"])
    summary = json.loads(as_json.stdout)
    assert summary["already_scanned"] and summary["exit_code"] == 1


def test_a_command_line_scan_runs_in_process_unless_a_prefect_server_is_configured(tmp_path, sample_batch):
    executable = shutil.which("poisonguard") or f"{sys.prefix}/bin/poisonguard"
    env = {key: value for key, value in os.environ.items() if key != "PREFECT_API_URL"}
    env["PREFECT_HOME"] = str(tmp_path / "prefect")
    completed = subprocess.run(
        [executable, "scan", str(sample_batch), "--dataset", "loans", "-y", "risk_grade", "--out", str(tmp_path / "out"),
         "--json"], capture_output=True, text=True, timeout=300, env=env,
    )
    assert completed.returncode == 1, completed.stderr
    assert json.loads(completed.stdout)["rows_in"] == 2_000
    assert not (tmp_path / "prefect").exists()  # no Prefect home, database or temporary server was made


def test_a_scan_logged_to_a_file_shows_a_timed_line_per_step_and_quiet_shows_nothing(tmp_path, sample_batch):
    executable = shutil.which("poisonguard") or f"{sys.prefix}/bin/poisonguard"
    env = {key: value for key, value in os.environ.items() if key != "PREFECT_API_URL"}
    command = [executable, "scan", str(sample_batch), "--dataset", "loans", "-y", "risk_grade", "--out",
               str(tmp_path / "out")]
    logged = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert logged.returncode == 1, logged.stderr
    assert re.search(r"^\[ *\d+\.\d s\] poisonguard scoring 2,000 rows$", logged.stderr, re.MULTILINE), logged.stderr
    assert re.search(r"\d+\.\d s, [\d,]+ rows/s", logged.stdout), logged.stdout
    quiet = subprocess.run([*command, "--force", "--quiet", "--exit-zero"], capture_output=True, text=True,
                           timeout=300, env=env)
    assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, "", "")


@pytest.mark.usefixtures("prefect_harness")
def test_asked_to_a_command_line_scan_runs_as_a_prefect_flow(tmp_path):
    from prefect.artifacts import Artifact

    make_frame(400, seed=1).to_csv(tmp_path / "ref.csv", index=False)
    make_frame(40, seed=2).to_csv(tmp_path / "batch.csv", index=False)
    args = ["scan", str(tmp_path / "batch.csv"), "-y", "label", "-r", str(tmp_path / "ref.csv"), "--dataset",
            "asked-as-a-flow", "--out", str(tmp_path / "out")]
    result = runner.invoke(app, [*args, "--prefect"])
    assert result.exit_code in (0, 1), result.output
    assert Artifact.get("poisonguard-asked-as-a-flow-summary") is not None
    dask_in_process = runner.invoke(app, [*args, "--in-process", "--task-runner", "dask"])
    assert dask_in_process.exit_code == 2 and "drop --in-process" in dask_in_process.output


@pytest.mark.usefixtures("prefect_harness")
def test_a_clean_batch_exits_0(tmp_path):
    make_frame(400, seed=1).to_csv(tmp_path / "ref.csv", index=False)
    make_frame(40, seed=2).to_csv(tmp_path / "batch.csv", index=False)
    args = ["scan", str(tmp_path / "batch.csv"), "-y", "label", "-r", str(tmp_path / "ref.csv")]
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "out"), "--max-false-quarantine", "0.001"])
    assert result.exit_code == 0, result.output
    assert "clean" in result.output


@pytest.mark.usefixtures("prefect_harness")
def test_a_rejected_batch_exits_3(tmp_path):
    make_frame(300).to_csv(tmp_path / "ref.csv", index=False)
    make_frame(30).drop(columns="x1").to_csv(tmp_path / "batch.csv", index=False)
    args = ["scan", str(tmp_path / "batch.csv"), "-y", "label", "-r", str(tmp_path / "ref.csv")]
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "out")])
    assert result.exit_code == 3, result.output
    assert "structural:missing_column:x1" in result.output


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.parametrize(
    ("make_args", "message"),
    [
        (lambda d: ["scan", str(d / "missing.csv")], "missing.csv: batch file not found"),
        (lambda d: ["scan", str(d / "batch.xlsx")], "pass --format"),
        (lambda d: ["scan", str(d / "batch.csv"), "--label-col", "target"], "label column 'target' not found"),
        (lambda d: ["scan", str(d / "batch.csv"), "--detectors", "ecod,magic"], "unknown detector 'magic'"),
        (lambda d: ["scan", str(d / "batch.csv"), "--max-false-quarantine", "2"], "max_false_quarantine"),
        (lambda d: ["scan", str(d / "batch.csv"), "-r", str(d / "nope.csv")], "nope.csv: reference not found"),
    ],
)
def test_user_errors_print_one_line_and_exit_2(tmp_path, make_args, message):
    make_frame(20).to_csv(tmp_path / "batch.csv", index=False)
    (tmp_path / "batch.xlsx").write_bytes(b"not a spreadsheet")
    result = runner.invoke(app, make_args(tmp_path))
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def test_expectations_init_writes_a_suite_and_refuses_to_overwrite(tmp_path):
    make_frame(100).to_csv(tmp_path / "trusted.csv", index=False)
    args = ["expectations", "init", "--reference", str(tmp_path / "trusted.csv"), "--label-col", "label"]
    args += ["--suite-dir", str(tmp_path / "suites")]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    suite = json.loads((tmp_path / "suites" / "trusted.json").read_text())
    assert suite["meta"]["poisonguard"]["label_col"] == "label"
    second = runner.invoke(app, args)
    assert second.exit_code == 2 and "--force" in second.output
    assert runner.invoke(app, [*args, "--force"]).exit_code == 0


@pytest.mark.parametrize(
    ("extra", "message"),
    [(["--label-col", "target"], "label column 'target' not found"), ([], "absent.csv: batch file not found"),
     (["--label-col", "labl"], "label column 'labl' not found; did you mean 'label'?")],
)
def test_the_installed_console_script_reports_user_errors_without_a_traceback(tmp_path, extra, message):
    make_frame(20).to_csv(tmp_path / "batch.csv", index=False)
    target = tmp_path / ("batch.csv" if extra else "absent.csv")
    executable = shutil.which("poisonguard") or f"{sys.prefix}/bin/poisonguard"
    completed = subprocess.run(
        [executable, "scan", str(target), *extra, "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PREFECT_HOME": str(tmp_path / "prefect")},
    )
    assert completed.returncode == 2, completed.stderr
    assert message in completed.stderr
    assert "Traceback" not in completed.stderr + completed.stdout
    assert len(completed.stderr.strip().splitlines()) == 1


def test_an_error_naming_a_toml_table_keeps_its_brackets(tmp_path):
    make_frame(20).to_csv(tmp_path / "batch.csv", index=False)
    (tmp_path / "settings.toml").write_text('[scan]\nlabel_col = "label"\nbudget = 0.02\n')
    result = runner.invoke(app, ["scan", str(tmp_path / "batch.csv"), "--config", str(tmp_path / "settings.toml")])
    assert result.exit_code == 2, result.output
    assert "unknown key(s) in [scan]: budget" in result.output


@pytest.mark.parametrize(
    ("command", "shown"),
    [(["scan"], "[auto]"), (["scan"], "[scan] table"), (["inbox"], "[required]"),
     (["review", "release"], "[the OS user]")],
)
def test_help_shows_the_defaults_written_in_brackets(command, shown):
    result = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert shown in result.output


def test_every_scan_option_is_a_setting_and_shows_the_settings_default():
    """The command line and the typed settings cannot drift apart: each option of `scan` sets a ScanConfig
    field of the same name, and a default the help text shows in brackets is the model's default."""
    import re
    import typing

    from poisonguard.cli.scan import scan
    from poisonguard.config import GROUP_OF, GROUPS, ScanConfig

    not_settings = {"file", "config_file", "as_json", "prefect", "quiet", "exit_zero", "verbose", "debug"}
    fields = {name: GROUPS[group].model_fields[name] for name, group in GROUP_OF.items()} | {
        name: field for name, field in ScanConfig.model_fields.items() if name not in GROUPS
    }
    for name, annotation in typing.get_type_hints(scan, include_extras=True).items():
        if name in not_settings or name == "return":
            continue
        assert name in fields, f"--{name} sets no ScanConfig field"
        option = annotation.__metadata__[0]
        shown = re.search(r"\[([^\]]+)\]\.?$", option.help or "")
        if shown and not shown.group(1).startswith(("with ", "the ")):
            default = fields[name].default
            expected = ",".join(default) if isinstance(default, tuple) else str(default)
            assert shown.group(1) == expected, f"--{name} shows [{shown.group(1)}], the setting's default is {expected}"


def test_help_offers_every_format_runner_and_built_in_detector_and_a_wrong_choice_is_refused():
    from poisonguard.detectors import REGISTRY
    from poisonguard.names import BUILT_IN_DETECTORS, FORMATS

    built_in = {name for name, cls in REGISTRY.items() if cls.__module__.startswith("poisonguard.detectors")}
    assert set(BUILT_IN_DETECTORS) == built_in
    shown = " ".join(runner.invoke(app, ["scan", "--help"], env={"COLUMNS": "200"}).output.split())
    assert f"--format <{'|'.join(FORMATS)}>" in shown and "--task-runner <default|dask>" in shown
    assert all(name in shown for name in BUILT_IN_DETECTORS)
    refused = runner.invoke(app, ["scan", "batch.xlsx", "--format", "xlsx"])
    assert refused.exit_code == 2 and "'xlsx' is not one of" in refused.output
