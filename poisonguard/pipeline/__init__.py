"""The scan pipeline: its plan (suite, label, reference, column kinds), its per-chunk steps (validate, flag,
stage) and their order (:mod:`poisonguard.pipeline.steps`), which the Prefect flow in
:mod:`poisonguard.flows.scan` and the in-process :func:`poisonguard.scan` both run."""
