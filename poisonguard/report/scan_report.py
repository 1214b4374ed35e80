"""The JSON report of one scan, and the short summary the CLI prints and the flow returns."""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass, field
from datetime import datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any
from urllib.parse import quote

from poisonguard import __version__
from poisonguard.errors import ExitCode
from poisonguard.ingest.read import Batch
from poisonguard.safe_text import format_count, markdown_text, printable
from poisonguard.write.outputs import OutputPaths

CLEAN = "clean"
ROWS_QUARANTINED = "rows_quarantined"
REJECTED = "rejected"
REPLAY = "replay"  # the same file was delivered before; nothing written
_PACKAGES = ("pandas", "numpy", "scikit-learn", "pyod", "great-expectations", "prefect", "pyarrow")


@dataclass(frozen=True)
class ScanSummary:
    """What one scan decided, in a form the CLI prints and the flow returns."""

    dataset: str
    batch_id: str
    status: str
    rows_in: int | None
    rows_clean: int
    rows_quarantined: int | None
    reasons: dict[str, int] = field(default_factory=dict)
    report_path: str = ""
    already_scanned: bool = False
    provenance: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)  # what weakens the scan's promise (a small reference)

    @property
    def exit_code(self) -> ExitCode:
        return {
            CLEAN: ExitCode.CLEAN,
            ROWS_QUARANTINED: ExitCode.ROWS_QUARANTINED,
            REJECTED: ExitCode.BATCH_REJECTED,
            REPLAY: ExitCode.BATCH_REJECTED,
        }[self.status]

    @classmethod
    def from_report(cls, report: dict[str, Any], report_path: Path, already_scanned: bool = False) -> ScanSummary:
        rows = report["rows"]
        return cls(
            dataset=report["dataset"],
            batch_id=report["batch_id"],
            status=report["status"],
            rows_in=rows["in"],
            rows_clean=rows["clean"],
            rows_quarantined=rows["quarantined"],
            reasons=report["reasons"],
            report_path=str(report_path),
            already_scanned=already_scanned,
            provenance=_provenance_brief(report.get("provenance") or {}),
            warnings=_calibration_warnings(report.get("calibration") or {}),
        )


def _calibration_warnings(calibration: dict[str, Any]) -> list[str]:
    """What weakens the promise: a warning (a small reference), and without a reference the rule's
    assumption and its estimated false quarantine."""
    found = [calibration.get("warning")]
    if calibration.get("mode") == "batch":
        found.append(calibration.get("note"))
    return [text for text in found if text]


def _provenance_brief(provenance: dict[str, Any]) -> dict[str, Any]:
    keys = ("status", "source_id", "key_id", "failures", "replay_of")
    return {k: provenance[k] for k in keys if provenance.get(k) is not None}


def replay_summary(batch: Batch, provenance: Any, first_report: Path) -> ScanSummary:
    """The summary of a batch whose very file was delivered before: nothing is written for it.

    ``first_report`` is the report of the earlier delivery, whose outputs stay as they were.
    """
    return ScanSummary(
        dataset=batch.dataset,
        batch_id=batch.batch_id,
        status=REPLAY,
        rows_in=batch.n_rows,
        rows_clean=0,
        rows_quarantined=0,
        reasons={"provenance:replay": batch.n_rows or 0},
        report_path=str(first_report),
        provenance=_provenance_brief(provenance.to_dict()),
    )


def build_report(
    batch: Batch,
    paths: OutputPaths,
    out_dir: Path,
    *,
    status: str,
    rows_clean: int,
    rows_quarantined: int | None,
    reasons: dict[str, int],
    scanned_at: datetime,
    fingerprint: str,
    settings: dict[str, Any],
    suite_origin: str,
    label_col: str | None,
    expectations: list[dict[str, Any]],
    structural_failures: list[dict[str, str]],
    detectors: dict[str, dict[str, Any]],
    calibration: dict[str, Any],
    provenance: dict[str, Any],
    figures: dict[str, Any],
    timings: dict[str, float],
    unchecked: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Everything a reviewer or a later stage needs to know about one scan, JSON-ready.

    ``unchecked``: columns the suite gives no range or value set, with the reason."""
    if status == REJECTED and paths.rejected.exists():  # the raw file, kept whole
        outputs = {"rejected": _relative(paths.rejected, out_dir)}
    elif status == REJECTED:  # every row of an untrusted batch, in the quarantine file
        outputs = {"quarantine": _relative(paths.quarantine, out_dir)}
    else:
        outputs = {
            "clean": _relative(paths.clean, out_dir),
            "quarantine": _relative(paths.quarantine, out_dir) if rows_quarantined else None,
        }
    return {
        "poisonguard_version": __version__,
        "dataset": batch.dataset,
        "batch_id": batch.batch_id,
        "status": status,
        "scanned_at": scanned_at.isoformat(timespec="seconds"),
        "source": {
            "path": batch.origin or str(batch.source_path),
            **({"fetched_as": str(batch.source_path)} if batch.origin else {}),
            "format": batch.file_format,
            "sha256": batch.sha256,
            "size_bytes": batch.size_bytes,
        },
        "rows": {"in": batch.n_rows, "clean": rows_clean, "quarantined": rows_quarantined},
        "reasons": reasons,
        "detectors": detectors,
        "calibration": calibration,
        "provenance": provenance,
        "distributions": figures.get("distributions", {}),
        "class_balance": figures.get("class_balance"),
        "feature_drift": figures.get("feature_drift", []),
        "score_drift": figures.get("score_drift", []),
        "batch_drift": figures.get("batch_drift"),
        "schema": {"suite": suite_origin, "label_col": label_col, "expectations": expectations,
                   "unchecked_columns": unchecked or {}},
        "structural_failures": structural_failures,
        "outputs": outputs,
        "settings": settings,
        "fingerprint": fingerprint,
        "timings_seconds": {k: round(v, 4) for k, v in timings.items()},
        "versions": versions(),
    }


def versions() -> dict[str, str]:
    found = {"python": platform.python_version(), "poisonguard": __version__}
    for package in _PACKAGES:
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "not installed"
    return found


def with_filed_place(report: dict[str, Any], filed: str) -> dict[str, Any]:
    """``report`` saying where its batch file was filed after the scan (an inbox moves it from its transient
    claim to ``processed/`` or ``failed/``: an absolute path, or a URL on object storage); the path it was
    scanned at is kept as ``source.scanned_as``."""
    source = dict(report["source"])
    source.setdefault("scanned_as", source["path"])
    source["path"] = str(filed)
    return report | {"source": source}


def read_report(path: Path) -> dict[str, Any] | None:
    """The report at ``path``, or ``None`` if there is none or it cannot be parsed."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _relative(path: Path, base: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path(base).resolve()))
    except ValueError:
        return str(path)


def review_link(review_url: str | None, dataset: str, batch_id: str) -> str | None:
    """The batch's page in the review app served at ``review_url``, or ``None`` without one."""
    if not review_url:
        return None
    return f"{review_url.rstrip('/')}/batch/{quote(dataset, safe='')}/{batch_id}"


def summary_markdown(summary: ScanSummary, html_report: Path | None, review_url: str | None = None) -> str:
    """A short markdown summary of a scan for the Prefect UI; values from the data are escaped. The link
    goes to the batch's page in the review app when ``review_url`` is given; otherwise the report's path
    is spelled out (a browser opens no ``file://`` link from the Prefect UI)."""
    lines = [
        f"### {markdown_text(summary.dataset)} / batch `{summary.batch_id}`: {summary.status.replace('_', ' ')}",
        "",
        "| rows in | clean | quarantined |",
        "|---:|---:|---:|",
        f"| {format_count(summary.rows_in)} | {format_count(summary.rows_clean)} "
        f"| {format_count(summary.rows_quarantined)} |",
        "",
    ]
    provenance = summary.provenance or {}
    if provenance:
        signer = f" by {markdown_text(provenance['source_id'])}" if provenance.get("source_id") else ""
        lines.append(f"Provenance: **{provenance['status'].replace('_', ' ')}**{signer}")
        lines += [
            f"- {markdown_text(f['code'])}: {markdown_text(f['message'])}" for f in provenance.get("failures", [])
        ]
        lines.append("")
    if (link := review_link(review_url, summary.dataset, summary.batch_id)) is not None:
        lines.append(f"Review it: [{markdown_text(link)}]({link})")
    if html_report is not None:
        lines.append(f"Report: `{markdown_text(str(Path(html_report).resolve()))}` (`poisonguard review serve` "
                     "serves it with the review queue)")
    return "\n".join(lines)


def summary_table(summary: ScanSummary) -> list[dict[str, Any]]:
    """Rows per reason code, for a Prefect table artifact."""
    if not summary.reasons:
        return [{"reason": "(none)", "rows": 0}]
    return [{"reason": printable(code), "rows": rows} for code, rows in summary.reasons.items()]


