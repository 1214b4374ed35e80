"""Provenance inside the scan: the flow under a real Prefect server, and the keys / sign / verify commands."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from conftest import make_frame
from conftest import signed_config as config_for
from typer.testing import CliRunner

from poisonguard import REASONS, ROW_ID
from poisonguard.cli import app
from poisonguard.config import ScanConfig
from poisonguard.errors import ConfigError
from poisonguard.flows.scan import run_scan
from poisonguard.provenance.ledger import Ledger
from poisonguard.write.outputs import OutputPaths

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


@pytest.mark.usefixtures("prefect_harness")
def test_a_signed_batch_passes_and_a_replay_of_it_writes_nothing(tmp_path, signed):
    batch, trust = signed
    config = config_for(tmp_path, trust)
    first = run_scan(batch, config)
    assert first.status in ("clean", "rows_quarantined")
    assert first.provenance["status"] == "verified" and first.provenance["source_id"] == "bank-a"
    paths = OutputPaths.for_batch(config.io.out_dir, "toy", first.batch_id)
    report = json.loads(paths.report.read_text())
    assert report["provenance"]["key_id"] == "bank-a-k1"
    written = {p: p.read_bytes() for p in (paths.clean, paths.report)}

    replay = run_scan(batch, config)
    assert replay.status == "replay" and int(replay.exit_code) == 3
    assert replay.reasons == {"provenance:replay": 80}
    assert {p: p.read_bytes() for p in written} == written  # the first delivery's outputs are untouched
    outcomes = [e.outcome for e in Ledger(config.ledger_path).entries()]
    assert outcomes == [first.status, "replay"]

    forced = run_scan(batch, config_for(tmp_path, trust, force=True))
    assert forced.status == first.status  # an explicit --force rescans the same file


@pytest.mark.usefixtures("prefect_harness")
def test_a_batch_modified_after_signing_is_quarantined_whole_with_its_reason(tmp_path, signed):
    batch, trust = signed
    batch.write_bytes(batch.read_bytes().replace(b"red", b"rez", 1))
    summary = run_scan(batch, config_for(tmp_path, trust))
    assert summary.status == "rejected" and summary.rows_quarantined == 80 and summary.rows_clean == 0
    paths = OutputPaths.for_batch(tmp_path / "out", "toy", summary.batch_id)
    assert not paths.clean.exists()
    quarantined = pd.read_parquet(paths.quarantine)
    assert sorted(quarantined[ROW_ID]) == list(range(80))
    assert all(list(r) == ["provenance:sha256_mismatch"] for r in quarantined[REASONS])
    report = json.loads(paths.report.read_text())
    assert report["provenance"]["failures"][0]["code"] == "provenance:sha256_mismatch"
    assert "bank-a" in json.dumps(report["provenance"])


@pytest.mark.usefixtures("prefect_harness")
def test_a_batch_without_manifest_is_rejected_when_provenance_is_required(tmp_path, signed):
    batch, trust = signed
    Path(str(batch) + ".manifest.json").unlink()
    summary = run_scan(batch, config_for(tmp_path, trust))
    assert summary.status == "rejected" and summary.reasons == {"provenance:manifest_missing": 80}
    relaxed = run_scan(batch, config_for(tmp_path, trust, require_provenance=False, out_dir=tmp_path / "adhoc"))
    assert relaxed.status != "rejected" and relaxed.provenance["status"] == "unsigned"


@pytest.mark.usefixtures("prefect_harness")
def test_an_unreadable_untrusted_batch_is_kept_as_a_raw_file(tmp_path, signed):
    _, trust = signed
    broken = tmp_path / "broken.csv"
    broken.write_bytes(b"")
    summary = run_scan(broken, config_for(tmp_path, trust))
    paths = OutputPaths.for_batch(tmp_path / "out", "toy", summary.batch_id)
    assert summary.status == "rejected"
    assert (paths.rejected / "broken.csv").exists() and "provenance:manifest_missing" in summary.reasons


def test_verify_prints_every_check_and_exits_3_on_tampering(tmp_path, signed):
    batch, trust = signed
    ok = invoke("verify", batch, "--trust-store", trust, "--out", tmp_path / "out")
    assert ok.exit_code == 0, ok.output
    assert "signature valid" in ok.output and "verified" in ok.output
    manifest = Path(str(batch) + ".manifest.json")
    data = json.loads(manifest.read_text())
    data["row_count"] = 81
    manifest.write_text(json.dumps(data))
    bad = invoke("verify", batch, "--trust-store", trust)
    assert bad.exit_code == 3
    assert "fail" in bad.output and "not trusted" in bad.output


def test_a_missing_trust_store_is_a_configuration_error(tmp_path):
    make_frame(20).to_csv(tmp_path / "batch.csv", index=False)
    result = invoke("scan", tmp_path / "batch.csv", "--trust-store", tmp_path / "nope.json")
    assert result.exit_code == 2
    assert "trust store not found" in result.output
    result = invoke("scan", tmp_path / "batch.csv", "--require-provenance")
    assert result.exit_code == 2 and "needs a trust store" in result.output
    with pytest.raises(ConfigError):
        ScanConfig(require_provenance=True)


def test_signing_an_unreadable_file_or_with_a_missing_key_fails_clearly(tmp_path):
    (tmp_path / "empty.csv").write_bytes(b"")
    result = invoke("sign", tmp_path / "empty.csv", "--source", "s", "--key", tmp_path / "none.pem")
    assert result.exit_code == 2 and "private key not found" in result.output
    invoke("keys", "generate", "--source", "s", "--key-id", "k", "--key-dir", tmp_path)
    result = invoke("sign", tmp_path / "empty.csv", "--source", "s", "--key", tmp_path / "k.pem")
    assert result.exit_code == 2 and "cannot sign a batch that cannot be read" in result.output
