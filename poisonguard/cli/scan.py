"""The ``poisonguard`` app and its ``scan`` and ``expectations init`` commands."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from poisonguard import __version__
from poisonguard.cli.common import console, count, fail, out, quiet_libraries, shown
from poisonguard.config import TASK_RUNNERS, ExpectationSettings, IOSettings, ScanConfig
from poisonguard.config_file import load_config
from poisonguard.errors import ConfigError
from poisonguard.names import BUILT_IN_DETECTORS, FORMATS, is_url
from poisonguard.prefect_env import prepare_prefect_environment, start_temporary_server

app = typer.Typer(
    name="poisonguard",
    help="Find poisoned rows in a training batch before it reaches training.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    # Help texts give defaults in brackets ("[0.01]"); rich markup would read them as style tags and drop them.
    rich_markup_mode=None,
)
expectations_app = typer.Typer(
    help="Build and inspect the schema suites of datasets.", no_args_is_help=True, rich_markup_mode=None
)
app.add_typer(expectations_app, name="expectations")


class _StatusHandler(logging.Handler):
    """Shows each progress message of the scan on the live status line."""

    def __init__(self, status) -> None:
        super().__init__(logging.INFO)
        self.status = status

    def emit(self, record: logging.LogRecord) -> None:
        self.status.update(f"[bold]poisonguard[/] {record.getMessage()}")


def _version(value: bool) -> None:
    if value:
        out.print(f"poisonguard {__version__}")
        raise typer.Exit()


# Choices the help lists and the parser checks.
FileFormat = Enum("FileFormat", {name: name for name in FORMATS}, type=str)
TaskRunner = Enum("TaskRunner", {name: name for name in TASK_RUNNERS}, type=str)


@app.callback()
def main_options(
    version: Annotated[
        Optional[bool], typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = None,
) -> None:
    """Find poisoned rows in a training batch before it reaches training."""


@app.command()
def scan(
    file: Annotated[str, typer.Argument(help="Batch file: CSV, Parquet or JSON Lines; a path or a URL "
                                             "(s3://bucket/key).")],
    label_col: Annotated[Optional[str], typer.Option("--label-col", "-y", help="Label column.")] = None,
    reference: Annotated[
        Optional[str], typer.Option("--reference", "-r", help="Trusted data: fit and calibrate on it (a path or "
                                                               "a URL).")
    ] = None,
    dataset: Annotated[
        Optional[str], typer.Option(help="Dataset name [with --trust-store the manifest's, else the file name].")
    ] = None,
    out_dir: Annotated[Optional[Path], typer.Option("--out", "-o", help="Output directory.")] = None,
    publish_url: Annotated[
        Optional[str], typer.Option("--publish", help="Also copy the outputs to this URL (s3://bucket/prefix), "
                                                      "the listing last.")
    ] = None,
    file_format: Annotated[
        Optional[FileFormat], typer.Option("--format", help="The batch's format (default: from its suffix).")
    ] = None,
    suite: Annotated[Optional[str], typer.Option(help="Expectation suite JSON to validate against (a path or a "
                                                      "URL).")] = None,
    suite_dir: Annotated[
        Optional[Path], typer.Option(help="Where suites live as <dataset>.json [expectations/suites].")
    ] = None,
    detectors: Annotated[
        Optional[str], typer.Option(help="Comma-separated detectors, or auto: every one that applies [auto]. "
                                         f"Built in: {', '.join(BUILT_IN_DETECTORS)}; auto,<name> adds to auto.")
    ] = None,
    max_false_quarantine: Annotated[
        Optional[float], typer.Option(help="Share of clean rows the detectors and inferred schema rules together may "
                                           "quarantine, between 0 and 0.5 (1% is 0.01) [0.01].")
    ] = None,
    embedding_prefix: Annotated[
        Optional[str], typer.Option(help="Columns with this prefix hold a precomputed embedding of each row.")
    ] = None,
    embedding_column: Annotated[
        Optional[str],
        typer.Option(help="This column holds a precomputed embedding of each row as a list of numbers (Parquet, JSONL)."),
    ] = None,
    id_col: Annotated[
        Optional[str], typer.Option(help="A key of each row (an order or patient id): kept, shown in review, never a feature.")
    ] = None,
    ignore_cols: Annotated[
        Optional[str], typer.Option(help="Comma-separated columns carried through as they are, never a feature.")
    ] = None,
    categorical_cols: Annotated[
        Optional[str], typer.Option(help="Comma-separated columns to treat as categories (codes, zip codes), "
                                         "whatever their values look like.")
    ] = None,
    text_cols: Annotated[
        Optional[str], typer.Option(help="Comma-separated columns to treat as free text.")
    ] = None,
    trust_store: Annotated[
        Optional[str], typer.Option(help="Trust store JSON: check the batch's manifest and replays (a path or a "
                                         "URL).")
    ] = None,
    require_provenance: Annotated[
        Optional[bool],
        typer.Option("--require-provenance/--no-require-provenance", help="Refuse batches without a valid manifest."),
    ] = None,
    chunk_rows: Annotated[
        Optional[int],
        typer.Option(help="Read, check and write the batch this many rows at a time (batches larger than memory)."),
    ] = None,
    task_runner: Annotated[
        Optional[TaskRunner], typer.Option(help="default (Prefect's thread pool) or dask (score row chunks in parallel).")
    ] = None,
    dask_address: Annotated[
        Optional[str], typer.Option(help="Use this existing Dask scheduler (tcp://host:8786) with --task-runner dask.")
    ] = None,
    config_file: Annotated[Optional[Path], typer.Option("--config", help="TOML file with a [scan] table.")] = None,
    force: Annotated[bool, typer.Option(help="Rescan even if this batch was scanned with these settings.")] = False,
    strict: Annotated[
        bool, typer.Option(help="Refuse unless the reference can hold the budget with 90% confidence.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    prefect: Annotated[
        Optional[bool],
        typer.Option("--prefect/--in-process",
                     help="Run as a Prefect flow (recorded on the server of PREFECT_API_URL, else a temporary one) "
                          "or in this process [a flow when PREFECT_API_URL is set or with --task-runner dask]."),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print no progress and no summary, only errors.")] = False,
    exit_zero: Annotated[
        bool, typer.Option(help="Exit 0 whatever the scan decided (rows quarantined, batch rejected); errors still fail.")
    ] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show Prefect's logs.")] = False,
    debug: Annotated[bool, typer.Option(help="Show tracebacks of internal errors.")] = False,
) -> None:
    """Scan FILE: validate, score and split its rows into clean and quarantine Parquet files."""
    started = time.perf_counter()
    try:
        base = load_config(config_file) if config_file else ScanConfig()
        config = base.with_overrides(
            label_col=label_col,
            reference=reference,
            dataset=dataset,
            out_dir=out_dir,
            publish_url=publish_url,
            file_format=file_format.value if file_format else None,
            suite=suite,
            suite_dir=suite_dir,
            detectors=_names(detectors) if detectors else None,
            max_false_quarantine=max_false_quarantine,
            embedding_prefix=embedding_prefix,
            embedding_column=embedding_column,
            id_col=id_col,
            ignore_cols=_names(ignore_cols) if ignore_cols else None,
            categorical_cols=_names(categorical_cols) if categorical_cols else None,
            text_cols=_names(text_cols) if text_cols else None,
            trust_store=trust_store,
            require_provenance=require_provenance,
            chunk_rows=chunk_rows,
            task_runner=task_runner.value if task_runner else None,
            dask_address=dask_address,
            force=force or None,
            strict=strict or None,
        )
        _check_paths(file, config)
        as_flow = runs_as_flow(prefect, config)
        if as_flow:
            prepare_prefect_environment(verbose)
        quiet_libraries(verbose)
        progress = logging.getLogger("poisonguard.progress")
        progress.setLevel(logging.INFO)
        progress.propagate = verbose
        with _progress_shown(quiet, started, "starting Prefect" if as_flow else "starting") as handler:
            progress.addHandler(handler)
            try:
                if as_flow:
                    from poisonguard.flows.scan import run_scan

                    start_temporary_server()
                    summary = run_scan(file, config)
                else:
                    from poisonguard.pipeline.steps import scan_file

                    summary = scan_file(file, config)
            finally:
                progress.removeHandler(handler)
    except typer.Exit:
        raise
    except Exception as error:  # noqa: BLE001 - every error ends in one clear line and an exit code
        fail(error, debug)
    seconds = time.perf_counter() - started
    if as_json:
        out.print_json(json.dumps(summary.__dict__ | {"exit_code": int(summary.exit_code), "seconds": round(seconds, 3)}))
    elif not quiet:
        _print_summary(summary, seconds)
    raise typer.Exit(0 if exit_zero else int(summary.exit_code))


@contextmanager
def _progress_shown(quiet: bool, started: float, first: str):
    """The handler that shows the scan's progress: a live status line on a terminal, one timed line per step
    on stderr otherwise (a log, a CI job), nothing with ``--quiet``."""
    if quiet:
        yield logging.NullHandler()
    elif console.is_terminal:
        with console.status(f"[bold]poisonguard[/] {first}", spinner="dots") as status:
            yield _StatusHandler(status)
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_Elapsed(started))
        yield handler


class _Elapsed(logging.Formatter):
    """``[   4.2 s] scoring 2,000 rows``: seconds since the command started."""

    def __init__(self, started: float) -> None:
        super().__init__()
        self.started = started

    def format(self, record: logging.LogRecord) -> str:
        return f"[{time.perf_counter() - self.started:6.1f} s] poisonguard {record.getMessage()}"


def _names(listed: str | None) -> tuple[str, ...]:
    """The names of a comma-separated option (``--detectors``, ``--ignore-cols``), blanks dropped."""
    return tuple(name.strip() for name in (listed or "").split(",") if name.strip())


def runs_as_flow(asked: bool | None, config: ScanConfig) -> bool:
    """Whether a scan runs as a Prefect flow: when asked (``--prefect``), when a Prefect server is configured
    (``PREFECT_API_URL``: the platform records its runs), or on Dask (the flow's task runner); otherwise
    in this process, the same steps without a Prefect server (11-17 s of a temporary one's start and stop)."""
    if config.execution.task_runner == "dask":
        if asked is False:
            raise ConfigError("--task-runner dask runs as a Prefect flow: drop --in-process")
        return True
    return asked if asked is not None else bool(os.environ.get("PREFECT_API_URL"))


def _check_paths(file: str, config: ScanConfig) -> None:
    """Fail fast, before Prefect starts, on the mistakes a user makes most. Inputs on object storage (URLs)
    are checked when the scan copies them in."""
    from poisonguard.errors import InputError
    from poisonguard.ingest.read import detect_format

    for label, path in (("batch file", file), ("reference", config.io.reference), ("suite", config.expectations.suite)):
        if path is not None and not is_url(path) and not Path(path).is_file():
            raise InputError(f"{path}: {label} not found; check the path")
    detect_format(Path(file), config.io.file_format)
    if not is_url(file):
        from poisonguard.provenance.manifest import scan_dataset

        dataset = scan_dataset(Path(file), config)  # a file name that cannot name a dataset fails here
        _check_columns(Path(file), config, dataset)
    if config.io.reference is not None:
        detect_format(Path(config.io.reference))
    writable_output_dir(Path(config.io.out_dir))
    if config.provenance.trust_store is not None and not is_url(config.provenance.trust_store):
        from poisonguard.provenance.trust import load_trust_store

        load_trust_store(config.provenance.trust_store)  # a missing or broken store fails here, before Prefect starts
    from poisonguard.detectors import expand_auto, make_detector

    chosen = expand_auto(config.detection.detectors, "reference") + expand_auto(config.detection.detectors, "batch")
    for name in dict.fromkeys(chosen):  # an unknown name or parameter fails here, before Prefect starts
        make_detector(name, **config.detection.detector_params.get(name, {}))
    for name in set(config.detection.detector_params) - set(chosen):  # only with auto (config refuses others)
        make_detector(name)  # a parameter table for a detector auto never runs: an unknown name fails


def _check_columns(file: Path, config: ScanConfig, dataset: str) -> None:
    """Columns named by the options that the batch's header does not hold: say so now, with the closest name.

    An id or ignored column must be one of the batch's. A label column that no header names (the batch's,
    the reference's) and the suite does not hold is a typo; a label missing from the batch alone, where a
    suite has it, is a batch the scan rejects. A header that cannot be read is left to the scan, which
    rejects the batch.
    """
    from poisonguard.errors import InputError
    from poisonguard.ingest.read import detect_format, header_columns
    from poisonguard.names import column_not_found

    label, roles = config.io.label_col, config.io.column_roles | config.io.column_kinds
    if label is None and not roles:
        return
    columns = []
    for path in (file, config.io.reference):
        if path is None:
            continue
        try:
            columns += header_columns(Path(path), detect_format(Path(path), config.io.file_format if path == file
                                                                  else None))
        except Exception:  # noqa: BLE001 - an unreadable file is the scan's to judge and report
            return
        if path == file:
            for column, role in roles.items():
                if column not in columns:
                    raise InputError(column_not_found(file, role, column, columns))
    if label is None:
        return
    suite = Path(config.expectations.suite or Path(config.expectations.suite_dir) / f"{dataset}.json")
    if suite.is_file():
        try:  # the suite's column set, read as plain JSON: Great Expectations takes seconds to import
            columns += next(e["kwargs"]["column_set"] for e in json.loads(suite.read_text(encoding="utf-8"))["expectations"]
                            if e.get("type") == "expect_table_columns_to_match_set")
        except Exception:  # noqa: BLE001 - a suite that is not what poisonguard writes is the scan's to report
            return
    if label not in columns:
        raise InputError(column_not_found(file, "label", label, list(dict.fromkeys(columns))))


def writable_output_dir(out_dir: Path) -> None:
    """Create ``out_dir`` if need be and write a probe file in it; :class:`InputError` when it is a file,
    :class:`StorageError` naming it and the cause when the file system refuses (permissions, read-only,
    immutable, full). Checked before Prefect starts; a folder inside it that refuses later is reported the
    same way when the scan reaches it."""
    import tempfile

    from poisonguard.errors import InputError, StorageError, storage_error

    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"--out {out_dir}: is a file, not a folder; choose a folder for the outputs")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out_dir, prefix=".poisonguard-probe-"):
            pass
    except OSError as error:
        raise storage_error(error) or StorageError(f"--out {out_dir}: cannot write there: {error}") from None


def _print_summary(summary, seconds: float | None = None) -> None:
    if summary.already_scanned:
        out.print("[dim]already scanned with these settings; showing the earlier result (--force rescans)[/]")
    if summary.status == "replay":
        out.print(
            "[red]replay:[/] this very file was delivered before; nothing was written "
            "(--force rescans it and replaces its outputs)",
            highlight=False,
        )
    title = shown(f"{summary.dataset} / batch {summary.batch_id}")
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(justify="right")
    colour = {"clean": "green", "rows_quarantined": "yellow", "rejected": "red", "replay": "red"}[summary.status]
    table.add_row("status", f"[{colour}]{summary.status.replace('_', ' ')}[/]")
    table.add_row("rows in", count(summary.rows_in))
    table.add_row("clean", count(summary.rows_clean))
    table.add_row("quarantined", count(summary.rows_quarantined))
    if seconds is not None and seconds > 0:
        pace = f", {count(round(summary.rows_in / seconds))} rows/s" if summary.rows_in and not summary.already_scanned else ""
        table.add_row("time", f"{seconds:.1f} s{pace}")
    provenance = summary.provenance
    if provenance:
        signer = f" ({provenance['source_id']}, key {provenance.get('key_id')})" if provenance.get("source_id") else ""
        table.add_row("provenance", shown(f"{provenance['status'].replace('_', ' ')}{signer}"))
    out.print(table)
    for failure in provenance.get("failures", []):
        out.print(f"[red]{shown(failure['code'])}[/]: {shown(failure['message'])}", highlight=False, soft_wrap=True)
    if summary.reasons:
        reasons = Table(show_header=True, title_justify="left")
        reasons.add_column("reason")
        reasons.add_column("rows", justify="right")
        for code, rows in summary.reasons.items():
            reasons.add_row(shown(code), count(rows))  # codes carry column names
        out.print(reasons)
    for warning in summary.warnings:
        out.print(f"[yellow]warning:[/] {shown(warning)}", highlight=False, soft_wrap=True)
    label = "report of the earlier delivery" if summary.status == "replay" else "report"
    out.print(f"{label}: {summary.report_path}", highlight=False, soft_wrap=True)


@expectations_app.command("init")
def expectations_init(
    reference: Annotated[Path, typer.Option("--reference", "-r", help="Trusted data to infer the suite from.")],
    label_col: Annotated[Optional[str], typer.Option("--label-col", "-y", help="Label column.")] = None,
    id_col: Annotated[Optional[str], typer.Option(help="A key of each row: no range or value set, never a feature.")] = None,
    ignore_cols: Annotated[
        Optional[str], typer.Option(help="Comma-separated columns with no range or value set, never a feature.")
    ] = None,
    categorical_cols: Annotated[
        Optional[str], typer.Option(help="Comma-separated columns to treat as categories, whatever their values.")
    ] = None,
    text_cols: Annotated[Optional[str], typer.Option(help="Comma-separated columns to treat as free text.")] = None,
    dataset: Annotated[Optional[str], typer.Option(help="Dataset name (default: the reference's file name).")] = None,
    suite_dir: Annotated[Path, typer.Option(help="Directory to write <dataset>.json in.")] = Path(
        "expectations/suites"
    ),
    range_margin: Annotated[
        float, typer.Option(help="Widen inferred numeric ranges by this share of their span.")
    ] = 0.1,
    range_false_quarantine: Annotated[
        float, typer.Option(help="Share of clean rows all inferred ranges and value sets together may fail.")
    ] = ExpectationSettings.model_fields["range_false_quarantine"].default,
    file_format: Annotated[Optional[str], typer.Option("--format", help="csv, parquet or jsonl.")] = None,
    force: Annotated[bool, typer.Option(help="Overwrite an existing suite.")] = False,
    debug: Annotated[bool, typer.Option(help="Show tracebacks of internal errors.")] = False,
) -> None:
    """Infer a dataset's schema suite from trusted data and save it as JSON."""
    try:
        from poisonguard.errors import ConfigError, InputError
        from poisonguard.expectations.suite import infer_suite, save_suite
        from poisonguard.ingest.read import read_batch

        if range_margin < 0:
            raise InputError("--range-margin must be zero or more")
        if not 0 < range_false_quarantine < 0.5:
            raise InputError("--range-false-quarantine is a share of rows: between 0 and 0.5, such as 0.001")
        batch = read_batch(reference, dataset=dataset, file_format=file_format)
        if batch.frame is None:
            raise InputError(f"reference {reference}: {batch.unreadable}")
        target = suite_dir / f"{batch.dataset}.json"
        if target.exists() and not force:
            raise ConfigError(f"{target}: a suite already exists; pass --force to replace it")
        columns = IOSettings(label_col=label_col, id_col=id_col, ignore_cols=_names(ignore_cols),
                             categorical_cols=_names(categorical_cols), text_cols=_names(text_cols))
        suite = infer_suite(batch.frame, batch.dataset, label_col, range_margin, source=str(reference),
                            range_false_quarantine=range_false_quarantine, roles=columns.column_roles,
                            kinds=columns.column_kinds)
        save_suite(suite, target)
    except typer.Exit:
        raise
    except Exception as error:  # noqa: BLE001
        fail(error, debug)
    out.print(
        f"wrote {target}: {len(suite.expectations)} expectations over {batch.n_rows:,} reference rows",
        highlight=False,
    )
