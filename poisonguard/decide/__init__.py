"""Decide: calibrated thresholds (pure functions on score arrays) and the one per-row result table that
combines schema failures and detector flags."""
