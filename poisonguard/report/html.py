"""The HTML report of a batch and the index page of a dataset, rendered from the JSON reports.

Templates are Jinja2 with autoescaping on, so every value that comes from the data (cells, column and
class names, file paths) is escaped; the only markup inserted as is comes from matplotlib, which renders
the score histograms offline to inline SVG. The pages load nothing from the network.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from jinja2 import Environment, PackageLoader, select_autoescape

from poisonguard import EXPLANATION, PVALUE_PREFIX, REASONS, ROW_ID, SCORE_PREFIX, STATUS, __version__
from poisonguard.decide.explain import detector_p_thresholds
from poisonguard.review.audit import AuditLog
from poisonguard.review.batches import (
    batch_overview,
    decision_counts,
    label_column,
    row_decisions,
    with_review_status,
)
from poisonguard.review.filters import evidence_order
from poisonguard.safe_text import format_count
from poisonguard.write.atomic import atomic_write_text

TOP_ROWS = 50
DRIFT_PLOTS = 12  # the most drifted columns are plotted; the rest are listed
_CELL_LIMIT = 120


def _environment() -> Environment:
    env = Environment(
        loader=PackageLoader("poisonguard.report", "templates"),
        autoescape=select_autoescape(["html", "j2"], default=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["thousands"] = format_count
    return env


def report_html_path(out_dir: Path, dataset: str, batch_id: str) -> Path:
    return Path(out_dir) / "reports" / dataset / f"{batch_id}.html"


def render_batch_report(report: dict[str, Any], out_dir: Path) -> Path:
    """Write ``reports/<dataset>/<batch_id>.html`` for ``report`` (a scan's JSON report), atomically."""
    out_dir = Path(out_dir)
    quarantined = report["rows"]["quarantined"] or 0
    # The batch's decisions, derived once from the audit log for both the counts and the top rows' status.
    decided = row_decisions(AuditLog(out_dir).entries(), report["dataset"], report["batch_id"]) if quarantined else {}
    rows, total, columns, numeric = _top_quarantined_rows(report, out_dir, decided)
    review = decision_counts(decided, quarantined) if quarantined else None
    verdict = report.get("batch_drift") or {}
    warnings = [w for w in [(report.get("class_balance") or {}).get("drift")] if w]
    if not verdict.get("drifted"):  # else the verdict says it once, and the drift section lists the details
        warnings += [d["message"] for d in report.get("feature_drift") or []]
        warnings += [d["message"] for d in report.get("score_drift") or []]
    drifted = sorted(report.get("feature_drift") or [], key=lambda d: -d.get("ks_statistic", 0))
    html = _environment().get_template("report.html.j2").render(
        r=report,
        version=__version__,
        plots={name: _histogram_svg(name, d) for name, d in (report.get("distributions") or {}).items()},
        verdict=verdict.get("message"),
        drifted=drifted,
        drift_plots={d["column"]: _drift_svg(d["column"], d["histogram"])
                     for d in drifted[:DRIFT_PLOTS] if d.get("histogram")},
        rows=rows,
        rows_shown=len(rows),
        rows_total=total,
        row_columns=columns,
        numeric_columns=numeric,
        review=review,
        warnings=warnings,
        p_thresholds=detector_p_thresholds(report.get("calibration") or {}, report.get("detectors") or {}),
    )
    return atomic_write_text(report_html_path(out_dir, report["dataset"], report["batch_id"]), html)


def render_index(out_dir: Path, dataset: str) -> Path:
    """Write ``reports/<dataset>/index.html``: every batch of the dataset with its status and review state."""
    batches = batch_overview(out_dir, dataset)
    html = _environment().get_template("index.html.j2").render(dataset=dataset, batches=batches, version=__version__)
    return atomic_write_text(Path(out_dir) / "reports" / dataset / "index.html", html)


def _top_quarantined_rows(report: dict[str, Any], out_dir: Path,
                          decided: dict[int, dict[str, Any]]) -> tuple[list[dict], int, list[str], set[str]]:
    relative = (report.get("outputs") or {}).get("quarantine")
    if not relative or not (out_dir / relative).exists():
        return [], 0, [], set()
    frame = pd.read_parquet(out_dir / relative)
    # Strongest evidence first (the smallest p-value), not the most reasons: one large genuine row can break
    # seven range rules and would sit above every flipped label.
    top = frame.iloc[evidence_order(frame)[:TOP_ROWS]]
    top = with_review_status(top, decided)
    label = label_column(report)
    labels = [label] if label in top.columns else []
    data_columns = [c for c in top.columns if not c.startswith("_") and c not in labels]
    score_columns = [c for c in top.columns if c.startswith(_NUMBERS_SHOWN)]  # each detector's score and p-value
    explained = [EXPLANATION] if EXPLANATION in top.columns else []  # quarantine files before it: codes only
    # What decides a row first (its label, reasons and evidence), then its values: at 1,400 px a reviewer
    # sees why a row is held without scrolling past twenty columns.
    columns = [ROW_ID, STATUS, *labels, REASONS, *explained, *score_columns, *data_columns]
    rows = [{c: _cell(record[c], c) for c in columns} for record in top[columns].to_dict("records")]
    numeric = {c for c in columns if c in top and pd.api.types.is_numeric_dtype(top[c])}
    return rows, len(frame), columns, numeric


_NUMBERS_SHOWN = (SCORE_PREFIX, PVALUE_PREFIX)


def _cell(value: Any, column: str) -> str:
    if column == REASONS:
        return ", ".join(value) if value is not None else ""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, (list, tuple, np.ndarray)):  # an embedding: its length and first few values
        shown = ", ".join(f"{v:.3g}" if isinstance(v, (int, float)) else str(v) for v in list(value)[:4])
        return f"[{shown}{', …' if len(value) > 4 else ''}] ({len(value):,} value{'s' if len(value) != 1 else ''})"
    if isinstance(value, float):
        return f"{value:.4g}" if column.startswith(_NUMBERS_SHOWN) else f"{value:g}"
    text = str(value)
    return text if len(text) <= _CELL_LIMIT else text[:_CELL_LIMIT] + f"… ({len(text):,} characters)"


def _histogram_svg(name: str, distribution: dict[str, Any]) -> str:
    from matplotlib.patches import Patch
    from matplotlib.ticker import FuncFormatter

    edges = np.asarray(distribution["edges"])
    kept = np.asarray(distribution["counts_kept"])
    flagged = np.asarray(distribution["counts_flagged"])

    def draw(axes: Any) -> None:
        axes.stairs(kept + flagged, edges, fill=True, color="#cf222e")
        axes.stairs(kept, edges, fill=True, color="#8c96a8")
        handles = [Patch(color="#8c96a8", label="not flagged"), Patch(color="#cf222e", label="flagged")]
        threshold = distribution.get("threshold")
        if threshold is not None:
            handles.append(axes.axvline(threshold, color="#1d2330", linestyle="--", linewidth=1, label="threshold"))
        axes.set_yscale("symlog", linthresh=10)
        axes.yaxis.set_major_formatter(FuncFormatter(lambda value, _: _short_count(value)))
        axes.set_xlabel(distribution["axis"])
        axes.set_ylabel("rows")
        axes.legend(handles=handles, fontsize=8, framealpha=0.85, edgecolor="none")

    return _svg(name, draw)


def _drift_svg(column: str, histogram: dict[str, Any]) -> str:
    """One column's distribution in the batch against the reference's, as shares of their rows."""
    edges = np.asarray(histogram["edges"])

    def draw(axes: Any) -> None:
        axes.stairs(histogram["reference"], edges, fill=True, color="#8c96a8", label="reference")
        axes.stairs(histogram["batch"], edges, color="#cf222e", linewidth=1.6, label="batch")
        axes.yaxis.set_major_formatter(lambda value, _: f"{value:.0%}")
        axes.set_xlabel(f"{column} (the end bins hold values beyond)")
        axes.set_ylabel("share of rows")
        axes.legend(fontsize=8, framealpha=0.85, edgecolor="none")

    return _svg(column, draw)


def _svg(title: str, draw: Any) -> str:
    """A small titled plot drawn by ``draw(axes)``, as inline SVG text.

    Plots are filled outlines (``stairs``) with plain-text tick labels and fixed margins: a bar per bin,
    mathtext ticks and tight_layout made the report's histograms take about 0.5 s each.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with matplotlib.rc_context({"svg.fonttype": "none", "font.size": 9}):
        figure, axes = plt.subplots(figsize=(4.6, 2.3))
        draw(axes)
        axes.set_title(title, loc="left", fontsize=10, fontweight="bold")
        axes.spines[["top", "right"]].set_visible(False)
        figure.subplots_adjust(left=0.14, right=0.98, top=0.88, bottom=0.21)
        buffer = io.StringIO()
        figure.savefig(buffer, format="svg", metadata={"Date": None})
        plt.close(figure)
    svg = buffer.getvalue()
    return svg[svg.index("<svg"):]


def _short_count(value: float) -> str:
    """A row count as a tick label: 0, 10, 1k, 100k, 10M."""
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= size:
            return f"{value / size:g}{suffix}"
    return f"{value:g}"
