"""The provenance suite: Great Expectations checks over the one-row provenance table of a batch.

Each expectation carries its reason code in ``meta["reason"]``; a failed expectation quarantines the
whole batch with that code. Facts that could not be established are null and skipped by the
expectations (``ExpectColumnValuesToBeInSet`` ignores nulls; the pair checks are told to), so a batch
with an unknown key fails ``provenance:unknown_key`` alone, not also ``provenance:signature_invalid``.

The suite is built in code rather than stored as JSON because it depends on the trust store (the
allowed sources) and on the scan's settings (required or optional manifest, maximum age).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from poisonguard.expectations.validate import SchemaValidator

SUITE_NAME = "poisonguard-provenance"
# reason code of each check -> what the check asserts, for people reading a report or `poisonguard verify`
CHECK_NAMES = {
    "provenance:manifest_missing": "manifest present",
    "provenance:manifest_malformed": "manifest is JSON",
    "provenance:manifest_invalid": "manifest fields complete and typed",
    "provenance:unknown_source": "source in trust store",
    "provenance:dataset_mismatch": "manifest names this dataset",
    "provenance:dataset_not_allowed": "source allowed for dataset",
    "provenance:unknown_key": "key known for source",
    "provenance:key_revoked": "key not revoked",
    "provenance:key_expired": "key not expired",
    "provenance:signature_invalid": "signature valid",
    "provenance:sha256_mismatch": "file sha256 as signed",
    "provenance:row_count_mismatch": "row count as signed",
    "provenance:columns_mismatch": "columns as signed",
    "provenance:created_in_future": "created_at not in the future",
    "provenance:manifest_too_old": "created_at within max age",
    "provenance:replay": "not delivered before",
}


@dataclass(frozen=True)
class CheckResult:
    check: str
    reason: str
    expectation: str
    columns: tuple[str, ...]
    applicable: bool
    success: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "check": self.check,
            "reason": self.reason,
            "expectation": self.expectation,
            "columns": list(self.columns),
            "result": "not applicable" if self.applicable is False and self.success else
            "pass" if self.success else "fail",
        }


def provenance_suite(
    trusted_sources: list[str],
    *,
    require_manifest: bool,
    max_age_seconds: float,
    clock_skew_seconds: float,
):
    """The suite for one scan; ``trusted_sources`` are the source ids of the trust store."""
    import great_expectations as gx
    import great_expectations.expectations as gxe

    def is_true(column: str, reason: str):
        return gxe.ExpectColumnValuesToBeInSet(column=column, value_set=[True], meta={"reason": reason})

    def is_false(column: str, reason: str):
        return gxe.ExpectColumnValuesToBeInSet(column=column, value_set=[False], meta={"reason": reason})

    def same(signed: str, read: str, reason: str):
        return gxe.ExpectColumnPairValuesToBeEqual(
            column_A=signed, column_B=read, ignore_row_if="either_value_is_missing", meta={"reason": reason}
        )

    expectations = [is_true("manifest_present", "provenance:manifest_missing")] if require_manifest else []
    expectations += [
        is_true("manifest_json_valid", "provenance:manifest_malformed"),
        is_true("manifest_fields_valid", "provenance:manifest_invalid"),
        gxe.ExpectColumnValuesToBeInSet(
            column="source_id", value_set=sorted(trusted_sources), meta={"reason": "provenance:unknown_source"}
        ),
        is_true("dataset_matches", "provenance:dataset_mismatch"),
        is_true("dataset_allowed", "provenance:dataset_not_allowed"),
        is_true("key_known", "provenance:unknown_key"),
        is_false("key_revoked", "provenance:key_revoked"),
        is_false("key_expired", "provenance:key_expired"),
        is_true("signature_valid", "provenance:signature_invalid"),
        same("sha256_signed", "sha256_read", "provenance:sha256_mismatch"),
        same("row_count_signed", "row_count_read", "provenance:row_count_mismatch"),
        same("columns_signed", "columns_read", "provenance:columns_mismatch"),
        gxe.ExpectColumnValuesToBeBetween(
            column="age_seconds", min_value=-clock_skew_seconds, meta={"reason": "provenance:created_in_future"}
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="age_seconds", max_value=max_age_seconds, meta={"reason": "provenance:manifest_too_old"}
        ),
        gxe.ExpectColumnValuesToBeNull(column="replay_of", meta={"reason": "provenance:replay"}),
    ]
    return gx.ExpectationSuite(name=SUITE_NAME, expectations=expectations)


def run_provenance_suite(facts: dict[str, Any], suite, validator: SchemaValidator) -> list[CheckResult]:
    """Validate the one-row table of ``facts`` against ``suite``; one result per expectation."""
    table = pd.DataFrame({name: pd.Series([value], dtype=_dtype(value)) for name, value in facts.items()})
    results = []
    for result in validator.run(table, list(suite.expectations)):
        config = result.expectation_config
        columns = tuple(
            config.kwargs[k] for k in ("column", "column_A", "column_B") if k in config.kwargs
        )
        if config.type == "expect_column_values_to_be_null":  # null is the passing value here
            applicable = bool(facts.get(f"{columns[0]}_checked", True))
        else:
            applicable = all(facts.get(c) is not None for c in columns)
        reason = config.meta["reason"]
        results.append(CheckResult(CHECK_NAMES[reason], reason, config.type, columns, applicable, bool(result.success)))
    return results


def _dtype(value: Any) -> str:
    # Keep nulls as None in object columns; GX skips them. Numbers stay numeric for the range checks.
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return "float64" if isinstance(value, float) else "int64"
    return "object"
