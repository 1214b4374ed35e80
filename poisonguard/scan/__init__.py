"""The scan's plan (suite, label, reference, column kinds) and its per-chunk steps (validate, flag, stage),
which the Prefect flow in :mod:`poisonguard.flows.scan` sequences."""
