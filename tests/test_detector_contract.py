"""Every detector is a scikit-learn estimator behind a public registry; PyOD models and third-party
detectors run in a scan and are calibrated like the built-in ones."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import make_frame
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from poisonguard.config import ScanConfig
from poisonguard.config_file import config_from_mapping, load_config
from poisonguard.detectors import REGISTRY, Detector, DetectorSpec, detector_spec, make_detector, register
from poisonguard.errors import ConfigError
from poisonguard.report.scan_report import read_report

NAMES = sorted(REGISTRY) + ["pyod:LOF", "pyod:HBOS"]


def _rows(n_rows: int = 120, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.choice(["a", "b"], size=n_rows).astype(object)
    X = rng.normal(size=(n_rows, 4)) + np.where(y == "a", 1.5, -1.5)[:, None]
    return X, y


@pytest.mark.parametrize("name", NAMES)
def test_every_detector_clones_with_its_parameters_and_refuses_to_score_unfitted(name):
    detector = make_detector(name, seed=7)
    twin = clone(detector)
    assert twin is not detector and twin.get_params() == detector.get_params()
    assert type(detector).__name__ in repr(detector)
    X, y = _rows()
    if detector.spec.reads == "text":  # one text per row
        X = np.array([f"word{int(v * 3) % 7} other{i % 5} {label}" for i, (v, label) in enumerate(zip(X[:, 0], y))],
                     dtype=object)
    with pytest.raises(NotFittedError):
        twin.decision_function(X, y)
    scores = twin.fit_decision_function(X, y)
    assert scores.shape == (len(X),) and np.isfinite(scores).all()


def test_set_params_reaches_the_estimator_a_class_wrapper_holds():
    from poisonguard.detectors import ClassConditional

    wrapped = ClassConditional(make_detector("iforest"), min_class_rows=10)
    wrapped.set_params(base__n_estimators=17)
    assert clone(wrapped).get_params()["base__n_estimators"] == 17


def test_a_seed_as_a_random_state_object_is_accepted_and_a_bad_seed_is_refused():
    X, y = _rows(400)
    seeded = make_detector("iforest", max_fit_rows=100, random_state=np.random.RandomState(3)).fit(X)
    assert np.isfinite(seeded.decision_function(X)).all()
    with pytest.raises(ValueError):
        make_detector("iforest", max_fit_rows=100, random_state=-1).fit(X)


class FarFromMean(Detector):
    """Euclidean distance from the fitted rows' mean: the simplest third-party detector."""

    spec = DetectorSpec(reason="outlier")

    def __init__(self, scale: float = 1.0) -> None:
        self.scale = scale

    def fit(self, X, y=None):
        self.mean_ = np.asarray(X, dtype=float).mean(axis=0)
        return self

    def decision_function(self, X, y=None):
        from sklearn.utils.validation import check_is_fitted

        check_is_fitted(self)
        return self.scale * np.linalg.norm(np.asarray(X, dtype=float) - self.mean_, axis=1)


def test_register_checks_the_contract_where_the_detector_is_declared():
    class NoScore(Detector):
        def fit(self, X, y=None):
            return self

    class BadSpec(FarFromMean):
        spec = {"reason": "outlier"}

    class Varargs(FarFromMean):
        def __init__(self, **params):
            self.params = params

    class NoNullModel(FarFromMean):
        spec = DetectorSpec(reason="outlier", null_model=True)

    with pytest.raises(ValueError, match="lowercase"):
        register("Far From Mean", FarFromMean)
    with pytest.raises(TypeError, match="not a subclass"):
        register("plain", object)
    with pytest.raises(TypeError, match="decision_function"):
        register("no_score", NoScore)
    with pytest.raises(TypeError, match="DetectorSpec"):
        register("bad_spec", BadSpec)
    with pytest.raises(TypeError, match="name each parameter"):
        register("varargs", Varargs)
    with pytest.raises(ValueError, match="already registered"):
        register("ecod", FarFromMean)
    with pytest.raises(TypeError, match="null_scores"):
        register("no_null_model", NoNullModel)
    with pytest.raises(ValueError, match="fitting"):
        DetectorSpec(fitting="sometimes")
    with pytest.raises(ValueError, match="natural_threshold keeps it"):
        DetectorSpec(natural_threshold=0.5, null_model=True)
    with pytest.raises(TypeError):
        REGISTRY["ecod"] = FarFromMean  # read-only: register() is the way in


def test_unknown_names_and_parameters_are_configuration_errors():
    with pytest.raises(ConfigError, match="pyod:<Model>"):
        detector_spec("lof")
    with pytest.raises(ConfigError, match="PyOD has no model 'NoSuchModel'"):
        detector_spec("pyod:NoSuchModel")
    with pytest.raises(ConfigError, match="n_estimator"):
        make_detector("iforest", n_estimator=300)
    with pytest.raises(ConfigError, match="not in detectors"):
        ScanConfig(detectors=("ecod",), detector_params={"iforest": {"n_estimators": 3}})


def test_detector_tables_in_the_config_file_carry_parameters_into_the_fingerprint(tmp_path):
    (tmp_path / "poisonguard.toml").write_text(textwrap.dedent("""
        [scan]
        label_col = "label"

        [[scan.detectors]]
        name = "ecod"

        [[scan.detectors]]
        name = "iforest"
        n_estimators = 300
    """))
    config = load_config(tmp_path / "poisonguard.toml")
    assert config.detection.detectors == ("ecod", "iforest")
    assert config.detection.detector_params == {"iforest": {"n_estimators": 300}}
    plain = config_from_mapping({"label_col": "label", "detectors": ["ecod", "iforest"]})
    assert config.fingerprint_fields() != plain.fingerprint_fields()
    assert "detector_params" not in plain.fingerprint_fields()  # earlier scans keep their fingerprint
    with pytest.raises(ConfigError, match="entry 1"):
        config_from_mapping({"detectors": [{"n_estimators": 300}]})


def _scan(tmp_path, detectors, **settings):
    from poisonguard.flows.scan import run_scan

    make_frame(600, seed=0).to_csv(tmp_path / "ref.csv", index=False)
    batch = make_frame(300, seed=1)
    batch.loc[:9, "x2"] = 12.0  # ten rows far out in a column every class shares
    batch.to_csv(tmp_path / "batch.csv", index=False)
    config = ScanConfig(label_col="label", reference=tmp_path / "ref.csv", out_dir=tmp_path / "out",
                        suite_dir=tmp_path / "no-suites", detectors=detectors, **settings)
    summary = run_scan(tmp_path / "batch.csv", config)
    return summary, read_report(summary.report_path)


def test_a_pyod_model_by_name_runs_and_is_calibrated_like_the_built_in_ones(prefect_harness, tmp_path):
    summary, report = _scan(tmp_path, ("ecod", "pyod:LOF"), detector_params={"pyod:LOF": {"n_neighbors": 15}})
    calibration = report["calibration"]
    assert calibration["mode"] == "reference" and set(calibration["per_detector_holdout_rate"]) == {"ecod", "pyod:LOF"}
    assert calibration["holdout_quarantine_rate"] <= 0.02
    assert report["detectors"]["pyod:LOF"]["reason"] == "outlier:pyod:LOF"
    assert report["detectors"]["pyod:LOF"]["flagged"] >= 8  # the ten far rows
    assert report["settings"]["detector_params"] == {"pyod:LOF": {"n_neighbors": 15}}


def test_a_detector_registered_from_outside_the_package_runs_in_a_scan(prefect_harness, tmp_path):
    register("far_from_mean", FarFromMean, replace=True)
    summary, report = _scan(tmp_path, ("far_from_mean",))
    assert report["detectors"]["far_from_mean"]["reason"] == "outlier:far_from_mean"
    assert report["detectors"]["far_from_mean"]["flagged"] >= 8
    assert report["calibration"]["mode"] == "reference"


def test_an_installed_package_adds_a_detector_the_command_line_finds(tmp_path):
    plugin = tmp_path / "plugin"
    (plugin / "far_detector-1.0.dist-info").mkdir(parents=True)
    (plugin / "far_detector-1.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: far-detector\nVersion: 1.0\n")
    (plugin / "far_detector-1.0.dist-info" / "entry_points.txt").write_text(
        "[poisonguard.detectors]\nfar = far_detector:Far\n")
    (plugin / "far_detector.py").write_text(textwrap.dedent("""
        import numpy as np
        from poisonguard.detectors import Detector, DetectorSpec

        class Far(Detector):
            spec = DetectorSpec(reason="outlier")

            def fit(self, X, y=None):
                self.mean_ = X.mean(axis=0)
                return self

            def decision_function(self, X, y=None):
                return np.linalg.norm(X - self.mean_, axis=1)
    """))
    make_frame(600, seed=0).to_csv(tmp_path / "ref.csv", index=False)
    make_frame(200, seed=1).to_csv(tmp_path / "batch.csv", index=False)
    executable = shutil.which("poisonguard") or f"{sys.prefix}/bin/poisonguard"
    completed = subprocess.run(
        [executable, "scan", str(tmp_path / "batch.csv"), "-y", "label", "-r", str(tmp_path / "ref.csv"),
         "--detectors", "ecod,far", "--out", str(tmp_path / "out"), "--json"],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PYTHONPATH": str(plugin)},
    )
    assert completed.returncode in (0, 1), completed.stderr
    summary = json.loads(completed.stdout)
    report = read_report(next((tmp_path / "out" / "reports").rglob(f"{summary['batch_id']}.json")))
    assert set(report["detectors"]) == {"ecod", "far"} and report["calibration"]["mode"] == "reference"


@pytest.mark.parametrize("with_reference", [True, False])
def test_a_detector_the_rows_cannot_fit_is_skipped_with_the_reason(prefect_harness, tmp_path, with_reference):
    from typer.testing import CliRunner

    from poisonguard.cli import app

    reference = make_frame(300, seed=0).assign(label="yes")  # one class: no label model can be fitted
    reference.to_csv(tmp_path / "ref.csv", index=False)
    batch = make_frame(200, seed=1).assign(label="yes")
    batch.to_csv(tmp_path / "batch.csv", index=False)
    detectors = "ecod,label_model" if with_reference else "ecod,confident_learning"
    args = ["scan", str(tmp_path / "batch.csv"), "-y", "label", "--detectors", detectors,
            "--out", str(tmp_path / "out"), *(["-r", str(tmp_path / "ref.csv")] if with_reference else [])]
    result = CliRunner().invoke(app, args)
    assert result.exit_code in (0, 1), result.output
    report = read_report(next((tmp_path / "out" / "reports").rglob("*.json")))
    skipped = detectors.split(",")[1]
    assert "cannot run on these rows" in report["calibration"]["skipped_detectors"][skipped]
    assert set(report["detectors"]) == {"ecod"}


def test_what_a_detector_says_of_a_row_adds_up_to_its_score():
    from poisonguard.detectors.label_model import LabelModelDetector
    from poisonguard.detectors.outliers import ECODDetector
    from poisonguard.score.crossfit import cross_fit

    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 4))
    y = np.where(X[:, 0] > 0, "a", "b").astype(object)
    ecod = ECODDetector().fit(X)
    assert np.allclose(ecod.feature_outlyingness(X[:7]).sum(axis=1), ecod.decision_function(X[:7]))
    assert ecod.feature_outlyingness(X[:0]).shape == (0, 4)
    # A copy per fold: the probabilities are the copies' mean, over the classes any copy saw.
    folds = [(np.arange(100, 400), np.arange(100)), (np.arange(300), np.arange(300, 400))]
    ensemble, _ = cross_fit(LabelModelDetector(), X, y, folds)
    classes, probabilities = ensemble.label_probabilities(X[:5])
    assert sorted(classes) == ["a", "b"] and np.allclose(probabilities.sum(axis=1), 1.0)
    assert list(classes[probabilities.argmax(axis=1)]) == list(y[:5])


def test_the_columns_named_are_those_whose_features_add_most():
    from poisonguard.score.details import top_columns

    sources = np.array(["age", "region", "region", "region", "note"], dtype=object)
    outlyingness = np.array([[0.1, 2.0, 0.0, 1.5, 0.2], [5.0, 0.0, 0.1, 0.0, 0.3]])
    assert [list(names) for names in top_columns(outlyingness, sources, top=2)] == [["region", "note"],
                                                                                   ["age", "note"]]
