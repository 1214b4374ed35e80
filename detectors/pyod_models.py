"""Any PyOD outlier model by name (``--detectors pyod:LOF``), behind the poisonguard contract.

The model is fitted on the rows a scan gives it and scores new rows with its own ``decision_function``
(higher is more outlying, PyOD's sign and poisonguard's). Its scores are calibrated like a built-in
detector's: conformal p-values against held-out reference rows, or the no-reference robust rule. PyOD's
own ``contamination`` threshold is never used. Note that PyOD's ``ECOD`` re-ranks the rows it scores with
its training rows (a row's score depends on its batch); the built-in ``ecod`` does not.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any, ClassVar

import numpy as np
from sklearn.utils.validation import check_is_fitted

from poisonguard.detectors.base import Detector, check_matrix, check_rows
from poisonguard.detectors.spec import DetectorSpec

PREFIX = "pyod:"
# Module names that are not the class name in lowercase.
_MODULES = {"autoencoder": "auto_encoder", "deepsvdd": "deep_svdd", "featurebagging": "feature_bagging"}


def pyod_model(name: str) -> type:
    """The PyOD detector class called ``name`` (any case: ``LOF``, ``lof``); ``ValueError`` naming it and
    what to give instead when PyOD has no such model."""
    key = name.lower()
    try:
        module = importlib.import_module(f"pyod.models.{_MODULES.get(key, key)}")
    except ImportError as exc:
        missing = getattr(exc, "name", "") or ""
        if missing.startswith("pyod"):
            raise ValueError(
                f"PyOD has no model {name!r}; give a class of pyod.models, for example LOF, HBOS, KNN, COPOD, "
                "OCSVM, PCA, IForest"
            ) from None
        raise ValueError(f"PyOD model {name!r} needs {missing or exc}, which is not installed") from None
    from pyod.models.base import BaseDetector

    for attribute, value in vars(module).items():
        if attribute.lower() == key and inspect.isclass(value) and issubclass(value, BaseDetector):
            return value
    raise ValueError(f"pyod.models.{module.__name__.rsplit('.', 1)[-1]} holds no detector class named {name!r}")


class PyODDetector(Detector):
    """A PyOD model (``model``: its class name) with ``model_params`` passed to its constructor.

    ``random_state`` is passed on to models that take one, unless ``model_params`` sets it.
    """

    spec: ClassVar[DetectorSpec] = DetectorSpec()

    def __init__(self, model: str = "LOF", model_params: dict[str, Any] | None = None,
                 random_state: int | None = None) -> None:
        self.model = model
        self.model_params = model_params
        self.random_state = random_state

    def fit(self, X: np.ndarray, y: np.ndarray | None = None) -> PyODDetector:
        who = f"{PREFIX}{self.model}"
        X = check_matrix(X, f"{who}.fit")
        check_rows(X, 2, who)
        model_class = pyod_model(self.model)
        params = dict(self.model_params or {})
        if self.random_state is not None and "random_state" in inspect.signature(model_class.__init__).parameters:
            params.setdefault("random_state", self.random_state)
        try:
            self.model_ = model_class(**params)
        except TypeError as exc:
            raise ValueError(f"{who}: {exc}; see the parameters of pyod.models' {model_class.__name__}") from None
        self.model_.fit(X)
        return self

    def decision_function(self, X: np.ndarray, y: np.ndarray | None = None) -> np.ndarray:
        check_is_fitted(self)
        X = check_matrix(X, f"{PREFIX}{self.model}.decision_function")
        if len(X) == 0:
            return np.zeros(0)
        return np.asarray(self.model_.decision_function(X), dtype="float64")
