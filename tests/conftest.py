"""Shared fixtures: one Prefect test harness per run, the bundled sample, small frame builders."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

# Prefect reads its settings when first imported: point it at a throwaway home before any test imports it.
_PREFECT_HOME = tempfile.mkdtemp(prefix="poisonguard-prefect-")
os.environ.setdefault("PREFECT_HOME", _PREFECT_HOME)
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "60")
# As the CLI does: Prefect's console handler stays quiet, so a user error shows as poisonguard's one line.
os.environ["PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL"] = "CRITICAL"

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

SAMPLES = Path(__file__).resolve().parent.parent / "data_samples"


@pytest.fixture(scope="session")
def prefect_harness():
    """A temporary Prefect server for the whole run; only flow and CLI tests ask for it."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        yield


@pytest.fixture(scope="session")
def sample_reference() -> Path:
    return SAMPLES / "loans_reference.csv"


@pytest.fixture(scope="session")
def sample_batch() -> Path:
    return SAMPLES / "loans_batch.csv"


@pytest.fixture(scope="session")
def scanned_sample(tmp_path_factory, sample_batch, sample_reference, prefect_harness):
    """The bundled sample scanned once with its reference as dataset loans: (summary, output directory).
    Shared by the tests of a run: read it, or decide on a copy (``sample_out``)."""
    from poisonguard.config import ScanConfig
    from poisonguard.flows.scan import run_scan

    out_dir = tmp_path_factory.mktemp("reviewed-sample")
    config = ScanConfig(label_col="risk_grade", reference=sample_reference, out_dir=out_dir, dataset="loans")
    return run_scan(sample_batch, config), out_dir


@pytest.fixture()
def sample_out(scanned_sample, tmp_path) -> tuple[object, Path]:
    """A private copy of the scanned sample's output directory, for tests that make decisions."""
    summary, out_dir = scanned_sample
    copy = tmp_path / "out"
    shutil.copytree(out_dir, copy)
    return summary, copy


@pytest.fixture()
def signed_out(sample_out, tmp_path) -> tuple[object, Path, Path, Path]:
    """A copy of the scanned sample, a reviewers file naming alice, and alice's private key:
    (summary, output directory, reviewers file, key)."""
    from typer.testing import CliRunner

    from poisonguard.cli import app

    summary, out = sample_out
    reviewers = tmp_path / "trusted" / "reviewers.json"
    made = CliRunner().invoke(app, ["review", "add-reviewer", "alice", "--reviewers", str(reviewers),
                                    "--key-dir", str(tmp_path / "keys")])
    assert made.exit_code == 0, made.output
    (key,) = (tmp_path / "keys").glob("alice-*.pem")
    return summary, out, reviewers, key


@pytest.fixture(scope="session")
def sample_truth() -> pd.DataFrame:
    return pd.read_csv(SAMPLES / "loans_batch_truth.csv")


def make_frame(n_rows: int = 400, seed: int = 0) -> pd.DataFrame:
    """A small two-class tabular frame with numeric and categorical columns and no nulls."""
    rng = np.random.default_rng(seed)
    label = rng.choice(["yes", "no"], size=n_rows)
    shift = np.where(label == "yes", 2.0, -2.0)
    return pd.DataFrame(
        {
            "x1": rng.normal(shift, 1.0),
            "x2": rng.normal(0.0, 1.0, n_rows),
            "count": rng.integers(0, 20, n_rows),
            "colour": rng.choice(["red", "green", "blue"], size=n_rows),
            "label": label,
        }
    )


def shown_threshold(calibration: dict, detector: str) -> str:
    """The p-value threshold a page states for ``detector``: the scan's threshold times the weight of each
    weight fold and class (one value where they agree at two digits, else their range)."""
    for key, by in (("row_weights", "row"), ("class_weights", "class")):
        weights = (calibration.get(key) or {}).get("weights", {}).get(detector)
        if weights is not None:
            break
    else:
        weights, by = [calibration["detector_weights"][detector]], ""
    low, high = (f"{calibration['p_value_threshold'] * w:.2g}" for w in (min(weights), max(weights)))
    return low if low == high else f"{low}-{high} by {by}"


# Ways to break a batch's structure, with the reason code each must give; used by validation and flow tests.
STRUCTURAL_BREAKS = [
    (lambda f: f.drop(columns="x2"), "structural:missing_column:x2"),
    (lambda f: f.drop(columns="label"), "structural:missing_label:label"),
    (lambda f: f.assign(extra=1), "structural:extra_column:extra"),
    (lambda f: f.assign(x1="not a number"), "structural:type:x1"),
]


@pytest.fixture()
def signed(tmp_path) -> tuple[Path, Path]:
    """A reference, a batch signed by bank-a, and a trust store that trusts bank-a for dataset toy."""
    from typer.testing import CliRunner

    from poisonguard.cli import app

    def invoke(*args):
        return CliRunner().invoke(app, [str(a) for a in args])

    make_frame(400, seed=1).to_csv(tmp_path / "reference.csv", index=False)
    batch = tmp_path / "batch.csv"
    make_frame(80, seed=2).to_csv(batch, index=False)
    trust = tmp_path / "trust.json"
    generated = invoke("keys", "generate", "--source", "bank-a", "--key-id", "bank-a-k1",
                       "--key-dir", tmp_path / "keys", "--trust-store", trust, "--dataset", "toy")
    assert generated.exit_code == 0, generated.output
    signing = invoke("sign", batch, "--source", "bank-a", "--key", tmp_path / "keys" / "bank-a-k1.pem",
                     "--dataset", "toy")
    assert signing.exit_code == 0, signing.output
    return batch, trust


def signed_config(tmp_path: Path, trust: Path, **overrides):
    """Scan settings for the ``signed`` batch: its reference, dataset toy, provenance required."""
    from poisonguard.config import ScanConfig

    settings = dict(label_col="label", reference=tmp_path / "reference.csv", out_dir=tmp_path / "out",
                    dataset="toy", trust_store=trust, require_provenance=True)
    return ScanConfig(**(settings | overrides))
