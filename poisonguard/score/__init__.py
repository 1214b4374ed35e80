"""Score: the configured detectors, fitted on a reference, cross-fitted, or on the batch itself, and each
row's scores. The detectors themselves live in :mod:`poisonguard.detectors`."""
