"""``poisonguard inbox`` (process an inbox once) and ``poisonguard serve`` (on a schedule, with Prefect)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from poisonguard.cli.common import console, fail, out, quiet_libraries, shown
from poisonguard.cli.scan import app
from poisonguard.errors import ConfigError, ExitCode
from poisonguard.names import is_url
from poisonguard.prefect_env import prepare_prefect_environment, start_temporary_server

InboxDir = Annotated[str, typer.Option("--inbox", help="The inbox batch files are dropped into: a directory, or a URL "
                                                        "on object storage (s3://bucket/inbox).")]
LabelCol = Annotated[Optional[str], typer.Option("--label-col", "-y", help="Label column.")]
Reference = Annotated[Optional[str], typer.Option("--reference", "-r",
                                                  help="Trusted reference data (a path or a URL).")]
Dataset = Annotated[
    Optional[str], typer.Option(help="Dataset name [the one each batch's manifest names, else its file name].")
]
OutDir = Annotated[Optional[Path], typer.Option("--out", "-o", help="Output directory.")]
TrustStore = Annotated[Optional[str], typer.Option(help="Trust store JSON, a path or a URL (required unless "
                                                        "--no-require-provenance).")]
Require = Annotated[bool, typer.Option("--require-provenance/--no-require-provenance",
                                       help="Refuse batches without a valid manifest [required].")]
ConfigFile = Annotated[Optional[Path], typer.Option("--config", help="TOML file with a [scan] table.")]
MinAge = Annotated[float, typer.Option(help="Leave files younger than this many seconds for the next run.")]
StaleAfter = Annotated[float, typer.Option(help="Take over claims older than this many seconds (a dead run's).")]


PublishUrl = Annotated[Optional[str], typer.Option(
    "--publish", help="Also copy each batch's outputs to this URL (s3://bucket/prefix), the listing last.")]


def _settings(label_col, reference, dataset, out_dir, trust_store, require_provenance, publish_url=None) -> dict:
    given = {"label_col": label_col, "reference": reference, "dataset": dataset, "out_dir": out_dir,
             "trust_store": trust_store, "require_provenance": require_provenance, "publish_url": publish_url}
    paths = {"reference", "out_dir", "trust_store"}
    return {k: str(Path(v).resolve()) if k in paths and not is_url(v) else v for k, v in given.items() if v is not None}


@app.command("inbox")
def inbox_run(
    inbox: InboxDir,
    label_col: LabelCol = None,
    reference: Reference = None,
    dataset: Dataset = None,
    out_dir: OutDir = None,
    publish_url: PublishUrl = None,
    trust_store: TrustStore = None,
    require_provenance: Require = True,
    config_file: ConfigFile = None,
    min_age: MinAge = 5.0,
    stale_after: StaleAfter = 3600.0,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show Prefect's logs.")] = False,
    debug: Annotated[bool, typer.Option(help="Show tracebacks of internal errors.")] = False,
) -> None:
    """Scan every batch file waiting in the inbox once, then move it to processed/ or failed/."""
    try:
        settings = _settings(label_col, reference, dataset, out_dir, trust_store, require_provenance, publish_url)
        _check(inbox, settings, config_file)
        prepare_prefect_environment(verbose)
        from poisonguard.flows.inbox import process_inbox

        quiet_libraries(verbose)
        with console.status("[bold]poisonguard[/] processing the inbox", spinner="dots"):
            start_temporary_server()
            results = process_inbox(_located(inbox), settings, str(config_file) if config_file else None,
                                    min_age, stale_after)
    except typer.Exit:
        raise
    except Exception as error:  # noqa: BLE001
        fail(error, debug)
    if not results:
        out.print(f"nothing waiting in {inbox}", highlight=False)
        return
    table = Table(title=shown(f"{inbox}: {len(results)} batch file(s)"), title_justify="left")
    for column in ("file", "status", "batch", "filed as", "detail"):
        table.add_column(column)
    for result in results:
        table.add_row(shown(result.name), result.status.replace("_", " "), result.batch_id or "",
                      shown(result.moved_to), shown(result.detail))
    out.print(table)
    failed = any(r.outcome == "failed" for r in results)
    raise typer.Exit(int(ExitCode.BATCH_REJECTED if failed else ExitCode.CLEAN))


@app.command()
def serve(
    inbox: InboxDir,
    cron: Annotated[str, typer.Option(help="When to process the inbox, as a cron expression (UTC).")] = "*/15 * * * *",
    name: Annotated[str, typer.Option(help="Deployment name.")] = "poisonguard-inbox",
    label_col: LabelCol = None,
    reference: Reference = None,
    dataset: Dataset = None,
    out_dir: OutDir = None,
    publish_url: PublishUrl = None,
    trust_store: TrustStore = None,
    require_provenance: Require = True,
    config_file: ConfigFile = None,
    min_age: MinAge = 5.0,
    stale_after: StaleAfter = 3600.0,
    debug: Annotated[bool, typer.Option(help="Show tracebacks of internal errors.")] = False,
) -> None:
    """Process the inbox on a cron schedule with Prefect's flow.serve (needs a running Prefect server)."""
    try:
        settings = _settings(label_col, reference, dataset, out_dir, trust_store, require_provenance, publish_url)
        config = _check(inbox, settings, config_file)
        # Where the runs write, as an absolute path in the deployment's parameters even when it is the default
        # (relative to wherever the serving process runs): what the Prefect UI shows is where the files are.
        settings.setdefault("out_dir", str(Path(config.io.out_dir).resolve()))
        prepare_prefect_environment(verbose=True)
        if not os.environ.get("PREFECT_API_URL") and not _configured_api_url():
            raise ConfigError(
                "scheduling needs a running Prefect server (an ephemeral one never creates scheduled runs). "
                "Start one with `prefect server start --host 127.0.0.1 --port 4200` and set "
                "PREFECT_API_URL=http://127.0.0.1:4200/api, then run serve again"
            )
        from poisonguard.flows.inbox import process_inbox

        out.print(f"serving {name}: the inbox {inbox} every '{cron}' (UTC); Ctrl-C stops", highlight=False)
        process_inbox.serve(
            name=name,
            cron=cron,
            parameters={"inbox": _located(inbox), "settings": settings,
                        "config_file": str(config_file.resolve()) if config_file else None,
                        "min_age_seconds": min_age, "stale_after_seconds": stale_after},
        )
    except typer.Exit:
        raise
    except Exception as error:  # noqa: BLE001
        fail(error, debug)


def _check(inbox: str, settings: dict, config_file: Path | None):
    """Fail before Prefect starts on a missing inbox or an inconsistent configuration; the configuration
    the runs will use."""
    from poisonguard.config_file import config_from_mapping, load_config
    from poisonguard.provenance.trust import load_trust_store

    if not is_url(inbox) and not Path(inbox).is_dir():
        raise ConfigError(f"{inbox}: inbox directory not found")
    base = load_config(config_file) if config_file else None
    config = config_from_mapping({"require_provenance": True, **settings}, base=base)
    if config.provenance.trust_store is not None and not is_url(config.provenance.trust_store):
        load_trust_store(config.provenance.trust_store)
    return config


def _located(inbox: str) -> str:
    """The inbox as the flow's parameter: a URL as given, a directory as an absolute path."""
    return inbox if is_url(inbox) else str(Path(inbox).resolve())


def _configured_api_url() -> str | None:
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value()
