"""Schema suites (Great Expectations) per dataset: inferred from trusted data, stored as JSON, validated.

``suite`` builds, saves and loads suites; ``validate`` runs them on a batch and turns the results into
whole-batch (structural) failures and per-row reason codes.
"""
