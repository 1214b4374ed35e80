"""``poisonguard.scan``: scan a DataFrame, an Arrow table or a batch file in this process, and work with the
result as DataFrames.

The scan is the command line's (:func:`poisonguard.pipeline.steps.scan_file`, every step the same), run
in process: no Prefect server and no flow run. It writes its files into a private temporary folder,
removed before :func:`scan` returns, so nothing is left behind unless :meth:`ScanResult.save` is asked to
write them where a command-line scan would.
"""

from __future__ import annotations

import html
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from poisonguard import EXPLANATION, REASONS, ROW_ID, is_reserved_column
from poisonguard.config import ExpectationSettings
from poisonguard.errors import ConfigError, InputError
from poisonguard.names import column_not_found

FRAME_DATASET = "dataframe"  # the dataset a DataFrame or table is scanned as, unless ``dataset=`` names one
_SHOWN_ROWS = 10  # quarantined rows shown in a notebook
_PATH_SETTINGS = ("suite", "suite_dir", "trust_store", "ledger")


@dataclass(frozen=True)
class _Request:
    """What :func:`scan` was asked, checked, kept so that :meth:`ScanResult.save` can run it again."""

    data: pd.DataFrame | pa.Table | Path
    reference: pd.DataFrame | pa.Table | Path | None
    settings: dict[str, Any]


def scan(data: pd.DataFrame | pa.Table | str | Path, *, label: str | None = None,
         reference: pd.DataFrame | pa.Table | str | Path | None = None, **settings: Any) -> ScanResult:
    """Scan ``data`` for poisoned rows, as ``poisonguard scan`` would, and return a :class:`ScanResult`.

    ``data`` and ``reference`` (trusted rows, optional): a pandas DataFrame, a pyarrow Table or the path
    of a CSV, Parquet or JSON Lines file. ``label``: the label column. ``settings``: any setting of
    :class:`~poisonguard.config.ScanConfig` by its flat name (``max_false_quarantine=0.02``,
    ``detectors=["ecod", "label_model"]``, ``dataset="loans"``, ``seed=1``), except ``out_dir``: nothing
    is written unless the result is saved.

    Raises :class:`~poisonguard.errors.InputError` for data it cannot read (naming the column or file)
    and :class:`~poisonguard.errors.ConfigError` for an unknown setting, a label column the data lacks
    (with the closest names) or a value of the wrong type, before anything is scanned.
    """
    for key, instead in (("out_dir", "call .save(out_dir) on the result"), ("label_col", "pass label="),
                         ("reference", "pass reference=")):
        if key in settings:
            raise ConfigError(f"scan() takes no {key!r} setting: {instead}")
    # Paths are taken as from here, so that a result saved later from another folder reads the same suite.
    settings = {key: Path(value).resolve() if key in _PATH_SETTINGS and isinstance(value, (str, Path)) else value
                for key, value in settings.items()}
    settings.setdefault("suite_dir", Path(ExpectationSettings.model_fields["suite_dir"].default).resolve())
    request = _Request(_checked_data(data, "data"), None if reference is None else _checked_data(reference, "reference"),
                       dict(settings, label_col=label))
    for name, given in (("data", request.data), ("reference", request.reference)):
        if given is not None and label is not None:
            _require_column(given, label, name)
    _config(request, Path(tempfile.gettempdir()) / "poisonguard-check", None)  # settings checked before any work
    with tempfile.TemporaryDirectory(prefix="poisonguard-") as folder:
        summary, results = _run(request, Path(folder), Path(folder) / "out", pages=False)
        from poisonguard.report.scan_report import read_report

        report = read_report(Path(summary.report_path)) or {}
    rows = _rows(request.data, request.settings)
    issues = _issues(results, report, rows.index)
    held = issues["quarantined"].to_numpy()
    quarantined = rows.iloc[np.flatnonzero(held)].assign(**{REASONS: issues["reasons"][held]})
    return ScanResult(clean=rows.iloc[np.flatnonzero(~held)], quarantined=quarantined, issues=issues,
                      report=report, _request=request)


@dataclass(frozen=True, repr=False)
class ScanResult:
    """What a scan decided, row by row, with the caller's index.

    ``clean``: the rows that go to training, as given. ``quarantined``: the rows held back, as given, with
    ``_reasons`` (their reason codes). ``issues``: one row per input row, indexed like the input:
    ``quarantined``, ``reasons`` and per detector ``<name>_score`` (higher is more suspicious),
    ``<name>_pvalue`` (with a reference) and ``<name>_flag``, and ``explanation``: the reasons in words
    (``applicant_age = 150 outside [18, 95]``, ``label_model: p = 0.0003 (flagged at p <= 0.0008)``). ``report``: the scan's JSON report, as the
    command line writes it.
    """

    clean: pd.DataFrame
    quarantined: pd.DataFrame
    issues: pd.DataFrame
    report: dict[str, Any]
    _request: _Request

    def summary(self) -> dict[str, Any]:
        """The outcome in brief: status, row counts, rows per reason, and what the calibration promises."""
        report, calibration = self.report, self.report.get("calibration") or {}
        brief = {
            "dataset": report.get("dataset"),
            "batch_id": report.get("batch_id"),
            "status": report.get("status"),
            "rows": dict(report.get("rows") or {}),
            "reasons": dict(report.get("reasons") or {}),
            "guarantee": calibration.get("guarantee") or calibration.get("assumption"),
        }
        if "false_quarantine_estimate" in calibration:
            brief["false_quarantine_estimate"] = calibration["false_quarantine_estimate"]
        return brief

    def save(self, out_dir: str | Path) -> Path:
        """Run the scan again into ``out_dir``, writing exactly the files ``poisonguard scan`` writes
        (clean and quarantine Parquet, reports, ledger, training listing), so that ``poisonguard review``
        works on them; return the JSON report's path. The scan is seeded, so it decides the same rows."""
        with tempfile.TemporaryDirectory(prefix="poisonguard-") as folder:
            summary, _ = _run(self._request, Path(folder), Path(out_dir))
        return Path(summary.report_path)

    def __repr__(self) -> str:
        brief = self.summary()
        rows = brief["rows"]
        reasons = ", ".join(f"{code} {count:,}" for code, count in brief["reasons"].items()) or "none"
        return (f"ScanResult({brief['dataset']} batch {brief['batch_id']}: {brief['status']}; "
                f"{rows.get('in', 0) or 0:,} rows in, {rows.get('clean', 0):,} clean, "
                f"{rows.get('quarantined', 0) or 0:,} quarantined; reasons: {reasons})")

    def _repr_html_(self) -> str:
        brief = self.summary()
        rows = brief["rows"]
        counts = "".join(f"<tr><td>{html.escape(str(code))}</td><td>{count:,}</td></tr>"
                         for code, count in brief["reasons"].items())
        shown = self.quarantined.head(_SHOWN_ROWS)
        return (
            f"<p><b>poisonguard</b>: {html.escape(str(brief['dataset']))} batch {html.escape(str(brief['batch_id']))}"
            f" &mdash; {html.escape(str(brief['status']))}: {rows.get('in', 0) or 0:,} rows in, "
            f"{rows.get('clean', 0):,} clean, {rows.get('quarantined', 0) or 0:,} quarantined</p>"
            f"<table><tr><th>reason</th><th>rows</th></tr>{counts}</table>"
            f"<p>first {len(shown)} quarantined rows:</p>{shown.to_html(escape=True, max_cols=12)}"
        )


def _checked_data(given: Any, name: str) -> pd.DataFrame | pa.Table | Path:
    if isinstance(given, (pd.DataFrame, pa.Table)):
        reserved = [str(c) for c in given.columns if is_reserved_column(str(c))]
        if reserved:
            raise InputError(f"{name}: column {reserved[0]!r} is a name poisonguard writes in its outputs; rename it")
        return given
    if isinstance(given, (str, Path)):
        path = Path(given)
        if not path.is_file():
            raise InputError(f"{name}: {path} is not a file")
        return path
    raise InputError(f"{name}: expected a pandas DataFrame, a pyarrow Table or a file path, got {type(given).__name__}")


def _columns(given: pd.DataFrame | pa.Table | Path) -> list[str] | None:
    if isinstance(given, pd.DataFrame):
        return [str(c) for c in given.columns]
    if isinstance(given, pa.Table):
        return list(given.column_names)
    return None  # a file's columns are checked where it is read


def _require_column(given: pd.DataFrame | pa.Table | Path, column: str, name: str) -> None:
    columns = _columns(given)
    if columns is not None and column not in columns:
        raise ConfigError(column_not_found(name, "label", column, columns))


def _config(request: _Request, folder: Path, out_dir: Path | None):
    """The scan's settings, with the data's and reference's files in ``folder`` (not written here)."""
    from poisonguard.config import ScanConfig

    settings = dict(request.settings)
    if not isinstance(request.data, Path):
        settings.setdefault("dataset", FRAME_DATASET)
    if request.reference is not None:
        settings["reference"] = _file_of(request.reference, folder / "reference.parquet")
    if out_dir is not None:
        settings["out_dir"] = out_dir
    return ScanConfig(**settings)


def _file_of(given: pd.DataFrame | pa.Table | Path, path: Path) -> Path:
    return given if isinstance(given, Path) else path


def _write_parquet(given: pd.DataFrame | pa.Table, path: Path, name: str) -> None:
    try:
        table = given if isinstance(given, pa.Table) else pa.Table.from_pandas(given, preserve_index=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
        raise InputError(f"{name}: cannot be stored as Parquet: {exc}") from None
    pq.write_table(table, path)


def _run(request: _Request, folder: Path, out_dir: Path, pages: bool = True):
    """The command line's scan of the request, in process, into ``out_dir``; (its summary, its per-row
    result tables). ``folder``: where the DataFrames and tables are written as Parquet to be read.
    ``pages``: write the HTML report and index too (not for a scan whose files nobody reads: its plots cost
    0.56 of 3.4 s on 10,000 rows)."""
    from poisonguard.pipeline.steps import IN_PROCESS, scan_file, stage
    from poisonguard.write.atomic import atomic_write_json

    config = _config(request, folder, out_dir)
    data_path = _file_of(request.data, folder / f"{config.io.dataset or 'batch'}.parquet")
    for given, path, name in ((request.data, data_path, "data"), (request.reference, config.io.reference, "reference")):
        if given is not None and not isinstance(given, Path):
            _write_parquet(given, path, name)
    results: list[pd.DataFrame] = []

    def stage_and_keep(*args) -> None:
        results.append(stage(*args))

    def json_report(path: Path, data: dict, out_dir: Path) -> None:
        atomic_write_json(path, data)

    steps = replace(IN_PROCESS, stage=stage_and_keep, **({} if pages else {"report": json_report}))
    summary = scan_file(data_path, config, steps)
    return summary, results


def _rows(data: pd.DataFrame | pa.Table | Path, settings: dict[str, Any]) -> pd.DataFrame:
    """The input rows as the caller knows them: a DataFrame as given, a table or a file as pandas reads it."""
    if isinstance(data, pd.DataFrame):
        return data
    if isinstance(data, pa.Table):
        return data.to_pandas()
    from poisonguard.ingest.read import read_batch

    batch = read_batch(data, file_format=settings.get("file_format"))
    if batch.frame is None:
        return pd.DataFrame()
    return batch.frame.drop(columns=[ROW_ID])


def _issues(results: list[pd.DataFrame], report: dict[str, Any], index: pd.Index) -> pd.DataFrame:
    """One row per input row: quarantined, reasons, explanation (as the quarantine file words it), and each
    detector's score, p-value and flag."""
    from poisonguard.decide.explain import explain_rows
    from poisonguard.decide.result_table import QUARANTINED
    from poisonguard.report.scan_report import REJECTED

    n_rows = len(index)
    if report.get("status") == REJECTED or not results:
        # Rejected whole (its structure or its provenance): every row, for the batch's reasons.
        codes = list(report.get("reasons") or {}) if report.get("status") == REJECTED else []
        reasons = pd.Series([list(codes)] * n_rows, dtype=object, index=index)
        return pd.DataFrame({"quarantined": np.full(n_rows, bool(codes)), "reasons": reasons,
                             "explanation": explain_rows(pd.DataFrame(index=index), reasons, pd.DataFrame(), [], {})},
                            index=index)
    table = pd.concat(results, ignore_index=True).sort_values(ROW_ID, kind="stable")
    if len(table) != n_rows or not np.array_equal(table[ROW_ID].to_numpy(), np.arange(n_rows)):
        raise RuntimeError(f"the scan's results cover {len(table):,} rows, the input has {n_rows:,}")
    named = {QUARANTINED: "quarantined", REASONS: "reasons", EXPLANATION: "explanation"}
    issues = table.drop(columns=[ROW_ID]).rename(columns=named)
    issues["reasons"] = [list(codes) for codes in issues["reasons"].tolist()]
    issues.index = index
    first = list(named.values())
    return issues[first + [c for c in issues.columns if c not in first]]
