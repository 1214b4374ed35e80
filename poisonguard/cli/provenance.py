"""``poisonguard keys generate``, ``sign`` and ``verify``: the provenance commands of a source and a reader."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from poisonguard.cli.common import fail, out, quiet_libraries, shown
from poisonguard.cli.scan import app
from poisonguard.errors import ExitCode, InputError

keys_app = typer.Typer(help="Create signing keys for a source.", no_args_is_help=True, rich_markup_mode=None)
app.add_typer(keys_app, name="keys")

_RESULT_STYLE = {"pass": "green", "fail": "bold red", "not applicable": "dim"}


@keys_app.command("generate")
def keys_generate(
    source: Annotated[str, typer.Option(help="Source id the key signs for, e.g. bank-a.")],
    key_id: Annotated[Optional[str], typer.Option(help="Key id [<source>-<date>-<random>].")] = None,
    key_dir: Annotated[Path, typer.Option(help="Where to write the private key <key-id>.pem.")] = Path("keys"),
    trust_store: Annotated[
        Optional[Path], typer.Option(help="Add the public key to this trust store (created if absent).")
    ] = None,
    dataset: Annotated[
        Optional[list[str]], typer.Option(help="Dataset the source may deliver (repeat; default any).")
    ] = None,
    expires_days: Annotated[Optional[int], typer.Option(help="The key expires after this many days.")] = None,
    debug: Annotated[bool, typer.Option(help="Show tracebacks of internal errors.")] = False,
) -> None:
    """Create an Ed25519 key pair for SOURCE; the private key file is readable by its owner only."""
    try:
        from poisonguard.provenance.manifest import generate_key, new_key_id
        from poisonguard.provenance.trust import add_key

        if expires_days is not None and expires_days <= 0:
            raise InputError("--expires-days must be positive")
        if trust_store is not None and trust_store.exists():
            from poisonguard.provenance.trust import load_trust_store

            load_trust_store(trust_store)  # refuse before a key is made for a store that cannot take it
        key_id = key_id or new_key_id(source)
        key = generate_key(key_dir, key_id)
        if trust_store is not None:
            expires_at = datetime.now(timezone.utc) + timedelta(days=expires_days) if expires_days else None
            add_key(trust_store, source, key.key_id, key.public_key, datasets=dataset, expires_at=expires_at)
    except typer.Exit:
        raise
    except Exception as error:  # noqa: BLE001
        fail(error, debug)
    out.print(f"key id:      {key.key_id}", highlight=False)
    out.print(f"private key: {key.private_key_path} (mode 0600; keep it with the source, never share it)", highlight=False)
    out.print(f"public key:  {key.public_key}", highlight=False)
    if trust_store is not None:
        out.print(f"added to trust store {trust_store} for source {source!r}", highlight=False)


@app.command()
def sign(
    file: Annotated[Path, typer.Argument(help="Batch file to sign.")],
    source: Annotated[str, typer.Option(help="Source id delivering the batch.")],
    key: Annotated[Path, typer.Option(help="The source's private key (PEM).")],
    key_id: Annotated[Optional[str], typer.Option(help="Key id [the key file's name without .pem].")] = None,
    dataset: Annotated[Optional[str], typer.Option(help="Dataset name (default: the file name).")] = None,
    file_format: Annotated[Optional[str], typer.Option("--format", help="csv, parquet or jsonl.")] = None,
    manifest: Annotated[
        Optional[Path], typer.Option(help="Where to write the manifest [FILE.manifest.json].")
    ] = None,
    debug: Annotated[bool, typer.Option(help="Show tracebacks of internal errors.")] = False,
) -> None:
    """Write a signed manifest for FILE: its sha256, row count and columns, signed with the source's key."""
    try:
        from poisonguard import ROW_ID
        from poisonguard.ingest.read import read_batch
        from poisonguard.provenance.manifest import (
            load_private_key,
            manifest_fields,
            manifest_path_for,
            sign_manifest,
            write_manifest,
        )

        private_key = load_private_key(key)
        batch = read_batch(file, dataset=dataset, file_format=file_format)
        if batch.frame is None:
            raise InputError(f"{file}: cannot sign a batch that cannot be read: {batch.unreadable}")
        fields = manifest_fields(
            dataset=batch.dataset,
            source_id=source,
            key_id=key_id or key.name.removesuffix(".pem"),
            file_name=file.name,
            sha256=batch.sha256,
            size_bytes=batch.size_bytes,
            row_count=batch.n_rows,
            columns=[c for c in batch.frame.columns if c != ROW_ID],
        )
        target = write_manifest(sign_manifest(fields, private_key), manifest or manifest_path_for(file))
    except typer.Exit:
        raise
    except Exception as error:  # noqa: BLE001
        fail(error, debug)
    out.print(
        f"wrote {target}: dataset {fields['dataset']!r}, {fields['row_count']:,} rows, "
        f"signed by {source!r} with key {fields['key_id']!r}",
        highlight=False,
    )


@app.command()
def verify(
    file: Annotated[Path, typer.Argument(help="Batch file to verify.")],
    trust_store: Annotated[Path, typer.Option(help="Trust store JSON.")],
    manifest: Annotated[Optional[Path], typer.Option(help="Manifest [FILE.manifest.json].")] = None,
    dataset: Annotated[
        Optional[str], typer.Option(help="Dataset the batch is for [the manifest's, else the file name].")
    ] = None,
    out_dir: Annotated[
        Path, typer.Option("--out", "-o", help="Output directory whose ledger.sqlite is checked for replays.")
    ] = Path("poisonguard-out"),
    max_age_hours: Annotated[float, typer.Option(help="Refuse manifests older than this.")] = 168.0,
    file_format: Annotated[Optional[str], typer.Option("--format", help="csv, parquet or jsonl.")] = None,
    debug: Annotated[bool, typer.Option(help="Show tracebacks of internal errors.")] = False,
) -> None:
    """Check FILE's manifest against the trust store and the replay ledger; print every check.

    Exit 0 when every check passes, 3 when any fails, 2 on a usage or configuration error.
    """
    try:
        from poisonguard.expectations.validate import SchemaValidator
        from poisonguard.ingest.read import read_batch
        from poisonguard.provenance.checks import assess_provenance
        from poisonguard.provenance.ledger import Ledger
        from poisonguard.provenance.manifest import declared_dataset, manifest_path_for
        from poisonguard.provenance.trust import load_trust_store

        store = load_trust_store(trust_store)
        manifest = manifest or manifest_path_for(file)
        dataset = dataset or declared_dataset(manifest)  # else the file name; the checks report the manifest
        batch = read_batch(file, dataset=dataset, file_format=file_format)
        ledger_path = out_dir / "ledger.sqlite"
        quiet_libraries(verbose=False)
        outcome = assess_provenance(
            batch,
            batch.dataset,
            store,
            Ledger(ledger_path) if ledger_path.exists() else None,
            required=True,
            max_age_seconds=max_age_hours * 3600,
            clock_skew_seconds=300.0,
            now=datetime.now(timezone.utc),
            validator=SchemaValidator(),
            manifest_path=manifest,
        )
    except typer.Exit:
        raise
    except Exception as error:  # noqa: BLE001
        fail(error, debug)
    messages = {f["code"]: f["message"] for f in outcome.failures}
    table = Table(title=shown(f"{file} for dataset {batch.dataset!r}"), title_justify="left")
    table.add_column("check")
    table.add_column("result")
    table.add_column("detail")
    for check in outcome.checks:
        style = _RESULT_STYLE[check["result"]]
        detail = messages.get(check["reason"], "")
        table.add_row(check["check"], f"[{style}]{check['result']}[/]", shown(detail))
    out.print(table)
    if not ledger_path.exists():
        out.print(f"[dim]replay: no ledger at {shown(str(ledger_path))}, so no earlier delivery to compare with[/]")
    verdict = "[green]verified[/]" if outcome.passed else "[bold red]not trusted[/]"
    signer = f" (source {outcome.source_id!r}, key {outcome.key_id!r})" if outcome.source_id else ""
    out.print(f"{verdict}{shown(signer)}", highlight=False)
    raise typer.Exit(int(ExitCode.CLEAN if outcome.passed else ExitCode.BATCH_REJECTED))
