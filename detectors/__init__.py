"""Row scorers with one contract, and the registry that names them.

Every detector follows :class:`~poisonguard.detectors.base.Detector`: parameters in the constructor,
``fit(X, y=None)`` returns ``self``, ``decision_function(X, y=None)`` returns one float per row, higher
meaning more suspicious. Adding a detector is one new module plus one line in ``REGISTRY``.
"""

from __future__ import annotations

from typing import Any

from poisonguard.detectors.base import Detector
from poisonguard.detectors.class_conditional import ClassConditional
from poisonguard.detectors.label_model import LabelModelDetector
from poisonguard.detectors.labels import ConfidentLearningDetector, ConflictingDuplicatesDetector, KNNLabelDetector
from poisonguard.detectors.outliers import ECODDetector, IForestDetector
from poisonguard.detectors.spectral import (
    ActivationClusteringDetector,
    RobustSpectralDetector,
    SpectralSignatureDetector,
)
from poisonguard.detectors.trigger_values import TriggerValueDetector
from poisonguard.errors import ConfigError

REGISTRY: dict[str, type[Detector]] = {
    "ecod": ECODDetector,
    "iforest": IForestDetector,
    "label_model": LabelModelDetector,
    "spectral": SpectralSignatureDetector,
    "activation_clustering": ActivationClusteringDetector,
    "robust_spectral": RobustSpectralDetector,
    "confident_learning": ConfidentLearningDetector,
    "knn_label": KNNLabelDetector,
    "duplicates": ConflictingDuplicatesDetector,
    "trigger_values": TriggerValueDetector,
}


def detector_class(name: str) -> type[Detector]:
    """The class registered as ``name``; raises :class:`ConfigError` for an unknown name."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown detector {name!r}; available: {', '.join(sorted(REGISTRY))}") from None


def make_detector(name: str, seed: int | None = None, **params: Any) -> Detector:
    """A new, unfitted detector registered as ``name``.

    ``seed`` is passed as ``random_state`` to detectors that take one. Raises :class:`ConfigError` for an
    unknown name.
    """
    detector_class_ = detector_class(name)
    if seed is not None and "random_state" in detector_class_._param_names():
        params.setdefault("random_state", seed)
    return detector_class_(**params)


__all__ = ["REGISTRY", "ClassConditional", "Detector", "detector_class", "make_detector"]
