"""Row scorers with one contract, and the registry that names them.

Every detector is a :class:`~poisonguard.detectors.base.Detector`: a scikit-learn estimator whose
``decision_function(X, y=None)`` returns one float per row, higher meaning more suspicious, and whose
class declares a :class:`~poisonguard.detectors.spec.DetectorSpec`. A name reaches a detector in one of
three ways:

* the built-in names below;
* ``pyod:<Model>``: any PyOD model by its class name (``pyod:LOF``, ``pyod:HBOS``);
* ``auto``: every registered detector whose spec lists the setting (a trusted reference given or not) in
  ``auto`` (:func:`auto_detectors`); the scan then keeps those whose needs are met;
* :func:`register`, from the user's own code, or from an installed package that declares the entry point
  group ``poisonguard.detectors`` (``mine = "my_package.module:MyDetector"``), so the command line finds it.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Mapping
from importlib.metadata import entry_points
from types import MappingProxyType
from typing import Any

from poisonguard.detectors.base import Detector
from poisonguard.detectors.class_conditional import ClassConditional
from poisonguard.detectors.label_model import BoostedLabelModelDetector, LabelModelDetector
from poisonguard.detectors.label_oof import OutOfFoldLabelDetector
from poisonguard.detectors.labels import ConfidentLearningDetector, KNNLabelDetector
from poisonguard.detectors.near_duplicates import NearDuplicateConflictDetector
from poisonguard.detectors.outliers import ECODDetector, IForestDetector, KNNDetector
from poisonguard.detectors.pyod_models import PREFIX as PYOD_PREFIX
from poisonguard.detectors.pyod_models import PyODDetector, pyod_model
from poisonguard.detectors.spec import AUTO_SETTINGS, DetectorSpec
from poisonguard.detectors.spectral import (
    ActivationClusteringDetector,
    RobustSpectralDetector,
    SpectralSignatureDetector,
)
from poisonguard.detectors.trigger_tokens import TriggerTokenDetector
from poisonguard.detectors.trigger_values import TriggerValueDetector
from poisonguard.errors import ConfigError

ENTRY_POINT_GROUP = "poisonguard.detectors"
AUTO = "auto"
_NAME = re.compile(r"[a-z][a-z0-9_]*")
_registry: dict[str, type[Detector]] = {}
# The registry as callers see it: read-only, changed through register() alone.
REGISTRY: Mapping[str, type[Detector]] = MappingProxyType(_registry)
_entry_points_loaded = False


def register(name: str, detector: type[Detector], *, replace: bool = False) -> type[Detector]:
    """Make ``detector`` available as ``name`` in ``--detectors`` and the config file; return it.

    Checked here, so a mistake shows where the detector is declared rather than in a scan: ``name`` is
    lowercase letters, digits and ``_``; ``detector`` is a :class:`Detector` subclass that implements
    ``fit`` and ``decision_function``, whose constructor takes only keyword-able parameters, and whose
    ``spec`` is a :class:`DetectorSpec`. Raises ``ValueError`` for a name already taken (unless
    ``replace``) and ``TypeError`` for a class that breaks the contract.
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"a detector name is lowercase letters, digits and '_', starting with a letter; got {name!r}")
    if name in _registry and _registry[name] is not detector and not replace:
        raise ValueError(f"a detector is already registered as {name!r} ({_registry[name].__name__}); pass replace=True")
    if not (inspect.isclass(detector) and issubclass(detector, Detector)):
        raise TypeError(f"{name}: {detector!r} is not a subclass of poisonguard.detectors.Detector")
    if inspect.isabstract(detector):
        raise TypeError(f"{name}: {detector.__name__} does not implement {', '.join(sorted(detector.__abstractmethods__))}")
    if not isinstance(detector.spec, DetectorSpec):
        raise TypeError(f"{name}: {detector.__name__}.spec must be a DetectorSpec, got {detector.spec!r}")
    if detector.spec.null_model and detector.null_scores is Detector.null_scores:
        raise TypeError(f"{name}: {detector.__name__}.spec declares null_model but the class does not implement "
                        "null_scores")
    varargs = [] if detector.__init__ is object.__init__ else [
        p.name for p in inspect.signature(detector.__init__).parameters.values()
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    if varargs:
        raise TypeError(f"{name}: {detector.__name__}.__init__ takes *{varargs[0]}; scikit-learn estimators "
                        "name each parameter")
    _registry[name] = detector
    return detector


for _name, _detector in {
    "ecod": ECODDetector,
    "iforest": IForestDetector,
    "knn": KNNDetector,
    "label_model": LabelModelDetector,
    "label_oof": OutOfFoldLabelDetector,
    "label_trees": BoostedLabelModelDetector,
    "spectral": SpectralSignatureDetector,
    "activation_clustering": ActivationClusteringDetector,
    "robust_spectral": RobustSpectralDetector,
    "confident_learning": ConfidentLearningDetector,
    "knn_label": KNNLabelDetector,
    "duplicates": NearDuplicateConflictDetector,
    "trigger_values": TriggerValueDetector,
    "trigger_tokens": TriggerTokenDetector,
}.items():
    register(_name, _detector)


def _load_entry_points() -> None:
    """Register the detectors installed packages declare (entry point group ``poisonguard.detectors``)."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for point in entry_points(group=ENTRY_POINT_GROUP):
        if point.name in _registry:
            continue
        try:
            register(point.name, point.load())
        except Exception as exc:  # a broken plugin names itself instead of breaking every scan
            raise ConfigError(f"detector {point.name!r} from entry point {point.value!r} cannot be used: {exc}") from exc


def auto_detectors(setting: str) -> list[str]:
    """The registered detectors ``--detectors auto`` runs in ``setting`` (``reference``: a trusted reference
    is given; ``batch``: none is), in registry order; installed plugins that declare it count too."""
    if setting not in AUTO_SETTINGS:
        raise ValueError(f"setting must be one of {', '.join(AUTO_SETTINGS)}, got {setting!r}")
    _load_entry_points()
    return [name for name, detector in _registry.items() if setting in detector.spec.auto]


def expand_auto(names: tuple[str, ...] | list[str], setting: str) -> list[str]:
    """``names`` with ``auto`` replaced by :func:`auto_detectors` of ``setting``, each name once, in order."""
    expanded: list[str] = []
    for name in names:
        expanded.extend(auto_detectors(setting) if name == AUTO else [name])
    return list(dict.fromkeys(expanded))


def detector_class(name: str) -> type[Detector]:
    """The class behind ``name`` (a registered name or ``pyod:<Model>``); :class:`ConfigError` naming the
    name and the choices when there is none."""
    if name.startswith(PYOD_PREFIX):
        try:
            pyod_model(name[len(PYOD_PREFIX):])
        except ValueError as exc:
            raise ConfigError(f"detector {name!r}: {exc}") from None
        return PyODDetector
    if name == AUTO:
        raise ConfigError(f"{AUTO!r} names a set of detectors, not one; expand it with expand_auto()")
    if name not in _registry:
        _load_entry_points()
    try:
        return _registry[name]
    except KeyError:
        raise ConfigError(
            f"unknown detector {name!r}; available: {', '.join(sorted(_registry))}, or pyod:<Model> "
            "(for example pyod:LOF)"
        ) from None


def detector_spec(name: str) -> DetectorSpec:
    """What the detector behind ``name`` needs and how it is fitted (see :func:`detector_class`)."""
    return detector_class(name).spec


def make_detector(name: str, seed: int | None = None, **params: Any) -> Detector:
    """A new, unfitted detector for ``name`` with ``params`` (for ``pyod:<Model>``, the model's own).

    ``seed`` is passed as ``random_state`` to detectors that take one. Raises :class:`ConfigError` for an
    unknown name or a parameter the detector does not take.
    """
    cls = detector_class(name)
    if cls is PyODDetector and name.startswith(PYOD_PREFIX):
        return PyODDetector(model=name[len(PYOD_PREFIX):], model_params=params or None, random_state=seed)
    accepted = {} if cls.__init__ is object.__init__ else inspect.signature(cls.__init__).parameters
    unknown = sorted(set(params) - set(accepted) - {"self"})
    if unknown:
        choices = ", ".join(p for p in accepted if p != "self") or "none"
        raise ConfigError(f"detector {name!r} takes no parameter {', '.join(map(repr, unknown))}; its parameters: {choices}")
    if seed is not None and "random_state" in accepted:
        params.setdefault("random_state", seed)
    try:
        return cls(**params)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"detector {name!r}: {exc}") from None


__all__ = [
    "AUTO",
    "REGISTRY",
    "ClassConditional",
    "Detector",
    "DetectorSpec",
    "PyODDetector",
    "auto_detectors",
    "detector_class",
    "detector_spec",
    "expand_auto",
    "make_detector",
    "register",
]
