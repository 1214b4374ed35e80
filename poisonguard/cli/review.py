"""``poisonguard review``: list quarantined batches, show their rows, release or confirm them, audit."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from poisonguard.cli.common import console, count, fail, out, shown
from poisonguard.cli.scan import app
from poisonguard.errors import ExitCode, InputError

review_app = typer.Typer(help="Review quarantined rows: release them to training or confirm them as poison.",
                         no_args_is_help=True, rich_markup_mode=None)
app.add_typer(review_app, name="review")

OutDir = Annotated[Path, typer.Option("--out", "-o", help="The scan output directory.")]
Debug = Annotated[bool, typer.Option(help="Show tracebacks of internal errors.")]
_SHOWN_ROWS = 20


@review_app.command("list")
def review_list(
    dataset: Annotated[Optional[str], typer.Option(help="Only this dataset.")] = None,
    status: Annotated[
        Optional[str], typer.Option(help="pending: batches with rows awaiting review; reviewed: none left.")
    ] = None,
    out_dir: OutDir = Path("poisonguard-out"),
    debug: Debug = False,
) -> None:
    """List scanned batches with their quarantine and review counts, newest first."""
    try:
        require_output_dir(out_dir)
        from poisonguard.review.audit import AuditLog
        from poisonguard.review.batches import batch_reports, review_counts

        if status not in (None, "pending", "reviewed"):
            raise InputError(f"--status must be pending or reviewed, not {status!r}")
        entries = AuditLog(out_dir).entries()
        table = Table(title=shown(f"batches under {out_dir}"), title_justify="left")
        for column in ("dataset", "batch", "scanned", "status"):
            table.add_column(column)
        for column in ("quarantined", "pending", "released", "confirmed"):
            table.add_column(column, justify="right")
        listed = 0
        for report in batch_reports(out_dir, dataset):
            quarantined = report["rows"]["quarantined"] or 0
            counts = review_counts(out_dir, report["dataset"], report["batch_id"], quarantined, entries)
            if status == "pending" and not counts["pending"]:
                continue
            if status == "reviewed" and (counts["pending"] or not quarantined):
                continue
            listed += 1
            table.add_row(shown(report["dataset"]), report["batch_id"], report.get("scanned_at", ""),
                          report["status"].replace("_", " "), count(quarantined), count(counts["pending"]),
                          count(counts["released"]), count(counts["confirmed"]))
    except typer.Exit:
        raise
    except Exception as error:  # noqa: BLE001
        fail(error, debug)
    if listed:
        out.print(table)
    else:
        out.print(f"no batches{' with rows pending review' if status == 'pending' else ''} under {out_dir}",
                  highlight=False)


@review_app.command("show")
def review_show(
    batch: Annotated[str, typer.Argument(help="Batch id (or its first 6+ characters).")],
    row: Annotated[Optional[int], typer.Option(help="Show this row in full, with its decision.")] = None,
    status: Annotated[Optional[str], typer.Option(help="Only rows that are pending, released or confirmed.")] = None,
    limit: Annotated[int, typer.Option(help="How many rows to list.")] = _SHOWN_ROWS,
    csv: Annotated[Optional[Path], typer.Option(help="Export the rows to this CSV (formulas escaped).")] = None,
    dataset: Annotated[Optional[str], typer.Option(help="Dataset, when the batch id is ambiguous.")] = None,
    out_dir: OutDir = Path("poisonguard-out"),
    debug: Debug = False,
) -> None:
    """Show a batch's quarantined rows with their reasons and review status."""
    try:
        require_output_dir(out_dir)
        from poisonguard import EXPLANATION, REASONS, ROW_ID, STATUS
        from poisonguard.review.audit import AuditLog
        from poisonguard.review.batches import find_batch, quarantined_rows, row_decisions, with_review_status
        from poisonguard.review.export import export_csv

        found = find_batch(out_dir, batch, dataset)
        decided = row_decisions(AuditLog(out_dir).entries(), found.dataset, found.batch_id)
        rows = with_review_status(quarantined_rows(found), decided)
        if status is not None:
            rows = rows[rows[STATUS] == status]
        if row is not None:
            rows = rows[rows[ROW_ID] == row]
            if rows.empty:
                raise InputError(f"row {row} is not quarantined in batch {found.batch_id}")
        exported = export_csv(rows, csv) if csv is not None else None
    except typer.Exit:
        raise
    except Exception as error:  # noqa: BLE001
        fail(error, debug)
    report = found.report
    out.print(
        f"[bold]{shown(found.dataset)} / {found.batch_id}[/] {report['status'].replace('_', ' ')}: "
        f"{count(report['rows']['in'])} rows in, {count(report['rows']['clean'])} clean, "
        f"{count(report['rows']['quarantined'])} quarantined",
        highlight=False,
    )
    if row is not None:
        record = rows.iloc[0]
        detail = Table(show_header=False)
        detail.add_column(style="bold")
        detail.add_column()
        for column, value in record.items():
            text = ", ".join(value) if column == REASONS else ("" if value is None else str(value))
            detail.add_row(shown(column), shown(text))  # cells hold the batch's own text
        out.print(detail)
    else:
        table = Table(title=f"{len(rows):,} rows" + (f", first {limit}" if len(rows) > limit else ""),
                      title_justify="left")
        explained = EXPLANATION in rows  # quarantine files written before it was kept have codes only
        key = (report.get("settings") or {}).get("id_col")  # the batch's own row key, when the scan named one
        key = key if key in rows else None
        for column in ("row",) + ((key,) if key else ()) + ("status", "reasons") + (("why",) if explained else ()):
            table.add_column(shown(column))
        for values in rows.head(limit).to_dict("records"):
            ids = (shown(str(values[key])),) if key else ()
            why = (shown(values[EXPLANATION] or ""),) if explained else ()
            table.add_row(str(values[ROW_ID]), *ids, values[STATUS], shown(", ".join(values[REASONS])), *why)
        out.print(table)
    if exported is not None:
        out.print(f"exported {len(rows):,} rows to {exported}", highlight=False)


def require_output_dir(out_dir: Path) -> None:
    """:class:`InputError` unless ``out_dir`` holds a scan's outputs: a mistyped ``--out`` must not read as
    "no batches" or "audit log intact"."""
    if not any((Path(out_dir) / part).exists() for part in ("reports", "review", "ledger.sqlite")):
        raise InputError(f"--out {out_dir}: no poisonguard outputs there (no reports/ or review/); check the path")


def _parse_rows(rows: list[str] | None, rows_from: Path | None) -> list[int] | None:
    """Row ids from ``--rows`` and ``--rows-from`` (one id a line, or a CSV with a ``_row_id`` column such as
    ``review show --csv`` writes); ``None`` when neither is given."""
    if rows is None and rows_from is None:
        return None
    parts = [part for chunk in rows or [] for part in chunk.split(",")]
    if rows_from is not None:
        parts += _ids_in_file(rows_from)
    ids = []
    for part in (p.strip() for p in parts):
        if not part:
            continue
        try:
            ids.append(int(part))
        except ValueError:
            raise InputError(f"--rows: {part!r} is not a row id (the _row_id column, an integer)") from None
    if not ids:
        raise InputError("--rows / --rows-from name no row id")
    return ids


def _ids_in_file(path: Path) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise InputError(f"--rows-from {path}: cannot read it ({error.strerror or error})") from None
    header = [c.strip() for c in lines[0].split(",")] if lines else []
    if "_row_id" in header:
        column = header.index("_row_id")
        import csv

        return [record[column] for record in csv.reader(lines[1:]) if len(record) > column]
    for number, line in enumerate(lines, start=1):
        if line.strip() and not line.strip().lstrip("-").isdigit():
            raise InputError(f"--rows-from {path}, line {number}: {line.strip()[:40]!r} is not a row id; give one "
                             "id a line, or a CSV with a _row_id column")
    return lines


def _selection(rows: list[str] | None, rows_from: Path | None, where: str | None, all_pending: bool,
               columns: list[str]) -> tuple[list[int] | None, object]:
    """(row ids, filter): exactly one of --rows/--rows-from, --where and --all must be given."""
    from poisonguard.review.filters import parse_where

    given = sum((rows is not None or rows_from is not None, where is not None, all_pending))
    if given != 1:
        raise InputError("give one of --rows ID[,ID...] (or --rows-from FILE), --where FILTER, or --all")
    if where is not None:
        return None, parse_where(where, columns)
    return _parse_rows(rows, rows_from), None


def _decide(action: str, batch: str, rows: list[str] | None, rows_from: Path | None, where: str | None,
            all_pending: bool, reason: str, reviewer: str | None, dataset: str | None, out_dir: Path,
            key: Path | None, reviewers: Path | None, debug: bool) -> None:
    try:
        require_output_dir(out_dir)
        from poisonguard.review.batches import find_batch, quarantined_columns
        from poisonguard.review.decisions import decide, refresh_outputs
        from poisonguard.review.reviewers import load_reviewers, signer_for

        if (key is None) != (reviewers is None):
            raise InputError("give --key and --reviewers together: the key signs, the reviewers file names its owner")
        columns = quarantined_columns(find_batch(out_dir, batch, dataset)) if where else []
        row_ids, row_filter = _selection(rows, rows_from, where, all_pending, columns)
        if action == "undo" and all_pending:
            raise InputError("--all means every pending row; say which decisions to undo with --rows or --where")
        known = load_reviewers(reviewers) if reviewers is not None else None
        signer = signer_for(key, known, reviewers) if key is not None else None
        decision = decide(out_dir, batch, action, row_ids=row_ids, where=row_filter, reason=reason,
                          reviewer=reviewer, dataset=dataset, signer=signer, reviewers=known)
    except typer.Exit:
        raise
    except Exception as error:  # noqa: BLE001
        fail(error, debug)
    for warning in refresh_outputs(out_dir, decision):
        console.print(f"[yellow]warning:[/] {shown(warning)}", highlight=False, soft_wrap=True)
    from poisonguard.review.audit import DONE

    out.print(
        f"{len(decision.row_ids):,} row(s) of {decision.batch.dataset} / {decision.batch.batch_id} {DONE[action]} by "
        f"{decision.entry['reviewer']} (audit seq {decision.entry['seq']})",
        highlight=False,
    )
    if decision.output is not None:
        out.print(f"released rows written to {decision.output}", highlight=False)


Rows = Annotated[Optional[list[str]], typer.Option("--rows", help="Row ids, comma-separated or repeated.")]
RowsFrom = Annotated[Optional[Path], typer.Option(
    "--rows-from", help="A file of row ids: one a line, or a CSV with a _row_id column (review show --csv).")]
Where = Annotated[Optional[str], typer.Option(
    help="The rows matching a filter, e.g. \"only_reason=schema:range:f5\" or \"detector=ecod and label=B\" "
         "(keys: reason, only_reason, detector, status, label, column.<name>).")]
All = Annotated[bool, typer.Option("--all", help="Every row of the batch still pending review.")]
Reason = Annotated[str, typer.Option(help="Why; recorded in the audit log.")]
Reviewer = Annotated[Optional[str], typer.Option(help="Who decides, without --key [the OS user].")]
Key = Annotated[Optional[Path], typer.Option("--key", help="The reviewer's Ed25519 private key: signs the decision.")]
Reviewers = Annotated[
    Optional[Path], typer.Option("--reviewers", help="Reviewers file: who may decide, with their public keys.")
]
Dataset = Annotated[Optional[str], typer.Option(help="Dataset, when the batch id is ambiguous.")]


def _decision_command(action: str, summary: str):
    """One command function per decision; all take the same options."""

    def command(
        batch: Annotated[str, typer.Argument(help="Batch id (or its first 6+ characters).")],
        reason: Reason,
        rows: Rows = None,
        rows_from: RowsFrom = None,
        where: Where = None,
        all_pending: All = False,
        reviewer: Reviewer = None,
        dataset: Dataset = None,
        out_dir: OutDir = Path("poisonguard-out"),
        key: Key = None,
        reviewers: Reviewers = None,
        debug: Debug = False,
    ) -> None:
        _decide(action, batch, rows, rows_from, where, all_pending, reason, reviewer, dataset, out_dir, key,
                reviewers, debug)

    command.__doc__ = summary
    return command


review_app.command("release")(_decision_command(
    "release", "Release quarantined rows to training: they are written as a new Parquet file in the clean area."
))
review_app.command("confirm")(_decision_command(
    "confirm", "Confirm quarantined rows as poison: they stay in quarantine for good."
))
review_app.command("undo")(_decision_command(
    "undo", "Take decisions back: the rows are pending again, released ones leave the clean area. The undo is "
            "a new audit entry; nothing in the log is rewritten."
))


@review_app.command("audit")
def review_audit(
    verify: Annotated[bool, typer.Option("--verify", help="Check the hash chain and the released files.")] = False,
    limit: Annotated[int, typer.Option(help="How many of the latest entries to list.")] = 20,
    out_dir: OutDir = Path("poisonguard-out"),
    reviewers: Reviewers = None,
    debug: Debug = False,
) -> None:
    """List the latest review decisions; with --verify, exit 3 if the log was edited or cut (and, with
    --reviewers, if an entry is not signed by a reviewer's key)."""
    try:
        require_output_dir(out_dir)
        from poisonguard.review.audit import AuditLog
        from poisonguard.review.reviewers import load_reviewers

        log = AuditLog(out_dir)
        check = log.verify(load_reviewers(reviewers) if reviewers is not None else None)
        entries = log.entries() if check.ok or not verify else []
    except typer.Exit:
        raise
    except Exception as error:  # noqa: BLE001
        fail(error, debug)
    if entries:
        table = Table(title=shown(f"{log.path}: {len(entries)} entries"), title_justify="left")
        for column in ("seq", "at", "reviewer", "action", "batch", "rows", "reason"):
            table.add_column(column)
        for entry in entries[-limit:]:
            table.add_row(str(entry["seq"]), entry["at"], shown(entry["reviewer"]), entry["action"],
                          shown(f"{entry['dataset']}/{entry['batch_id']}"), f"{len(entry['row_ids']):,}",
                          shown(entry["reason"]))
        out.print(table)
    if not verify:
        return
    if check.ok:
        out.print(f"[green]audit log intact[/]: {check.entries} entries, head {check.head}", highlight=False)
        out.print("[dim]keep the head hash elsewhere to detect entries cut from the end later[/]")
        if reviewers is None:
            out.print("[dim]signatures not checked: with --reviewers, an entry appended by someone without a "
                      "reviewer's key is caught; the chain alone cannot catch it[/]")
        return
    for problem in check.problems:
        out.print(f"[bold red]tampered:[/] {shown(problem)}", highlight=False, soft_wrap=True)
    raise typer.Exit(int(ExitCode.BATCH_REJECTED))


@review_app.command("add-reviewer")
def review_add_reviewer(
    name: Annotated[str, typer.Argument(help="The reviewer's name, as audit entries will carry it.")],
    reviewers: Annotated[Path, typer.Option("--reviewers", help="Reviewers file to add the key to (created).")],
    key_dir: Annotated[Path, typer.Option(help="Where to write the private key <key-id>.pem.")] = Path("keys"),
    key_id: Annotated[Optional[str], typer.Option(help="Key id [<name>-<date>-<random>].")] = None,
    debug: Debug = False,
) -> None:
    """Create an Ed25519 key pair for reviewer NAME and add its public key to the reviewers file."""
    try:
        from poisonguard.provenance.manifest import generate_key, new_key_id
        from poisonguard.review.reviewers import add_reviewer_key, load_reviewers

        if not name.strip() or name != name.strip() or not name.isprintable():
            raise InputError(f"reviewer name {name!r}: give a plain printable name")
        if reviewers.exists():
            load_reviewers(reviewers)  # refuse before a key is made for a file that cannot take it
        key = generate_key(key_dir, key_id or new_key_id(name))
        add_reviewer_key(reviewers, name, key.key_id, key.public_key)
    except typer.Exit:
        raise
    except Exception as error:  # noqa: BLE001
        fail(error, debug)
    out.print(f"reviewer {shown(name)}: key {key.key_id}, private key {key.private_key_path} (mode 0600; "
              f"keep it with {shown(name)}), public key added to {reviewers}", highlight=False)


@review_app.command("serve")
def review_serve(
    out_dir: OutDir = Path("poisonguard-out"),
    host: Annotated[str, typer.Option(help="The address to listen on; keep 127.0.0.1 unless behind a proxy.")] = (
        "127.0.0.1"),
    port: Annotated[int, typer.Option(help="The port to listen on.")] = 8765,
    reviewers: Reviewers = None,
    key: Annotated[Optional[list[Path]], typer.Option(
        "--key", help="A reviewer's Ed25519 private key (repeat for several reviewers); decisions are signed.")] = None,
    reviewer: Annotated[Optional[str], typer.Option(
        help="Without --reviewers: the one reviewer who decides here, unsigned [the OS user].")] = None,
    debug: Debug = False,
) -> None:
    """Serve the review queue in a browser: filter quarantined rows, release, confirm or undo them."""
    try:
        require_output_dir(out_dir)
        import uvicorn

        from poisonguard.review.app import create_app, login_tokens
        from poisonguard.review.decisions import os_user

        tokens = login_tokens(reviewers, list(key or []), None if reviewers else reviewer or os_user())
        hosts = tuple(dict.fromkeys((host, "127.0.0.1", "localhost")))
        app = create_app(out_dir, tokens, reviewers, hosts)
    except typer.Exit:
        raise
    except Exception as error:  # noqa: BLE001
        fail(error, debug)
    shown_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    out.print(f"reviewing {out_dir} at http://{shown_host}:{port}/ (Ctrl-C stops); log in with:", highlight=False)
    for token, login in tokens.items():
        signed = f", decisions signed with {login.key_path}" if login.key_path else ", decisions unsigned"
        out.print(f"  {shown(login.name)}{signed}: http://{shown_host}:{port}/login?token={token}", highlight=False,
                  soft_wrap=True)
    if host not in ("127.0.0.1", "localhost", "::1"):
        console.print(f"[yellow]warning:[/] listening on {host}: anyone who can reach it and holds a token can "
                      "decide; the traffic is plain http", highlight=False)
    uvicorn.run(app, host=host, port=port, log_level="warning")
