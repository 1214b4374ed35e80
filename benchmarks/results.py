"""``benchmarks/RESULTS.md`` holds one section per benchmark; each benchmark rewrites only its own."""

from __future__ import annotations

import re
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
TITLE = "# Benchmark results\n\nEach section is rewritten by the command it names; nothing here is typed by hand.\n"


def write_section(name: str, title: str, body: str, path: Path = RESULTS, section: str | None = None) -> None:
    """Replace the section ``section`` (default ``name``, the benchmark's module) of ``path``, or append it,
    with ``title``, the command, the versions and ``body``."""
    from poisonguard.report.scan_report import versions
    from poisonguard.write.atomic import atomic_write_text

    command = f"python -m benchmarks.{name} {' '.join(sys.argv[1:])}".rstrip()
    marker = section or name
    text_of_section = "\n".join([
        f"<!-- {marker}:start -->",
        f"## {title}",
        "",
        f"Command: `{command}`",
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in versions().items()),
        "",
        body.rstrip(),
        f"<!-- {marker}:end -->",
    ])
    text = path.read_text(encoding="utf-8") if path.exists() else TITLE
    if not text.startswith(TITLE):
        text = TITLE  # the file from before sections existed: start it afresh
    pattern = re.compile(rf"<!-- {re.escape(marker)}:start -->.*?<!-- {re.escape(marker)}:end -->", re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: text_of_section, text)
    else:
        text = text.rstrip("\n") + "\n\n" + text_of_section + "\n"
    atomic_write_text(path, text)


def add_run_arguments(parser, what: str) -> None:
    """``--jobs``, ``--runs-csv`` and ``--from-csv``: a long benchmark run in several processes, its per-run
    records saved, and its table rebuilt later from saved records (:func:`runs_of`)."""
    parser.add_argument("--jobs", type=int, default=1, help=f"{what} at once, one process each")
    parser.add_argument("--runs-csv", help="also save every run's record to this CSV")
    parser.add_argument("--from-csv", help="build the table from saved runs (comma-separated CSVs), running nothing")


def runs_of(args, run):
    """The per-run records: read from ``args.from_csv``, else ``run()``; saved to ``args.runs_csv`` if asked."""
    import pandas as pd

    if args.from_csv:
        results = pd.concat([pd.read_csv(path) for path in args.from_csv.split(",")], ignore_index=True)
    else:
        results = run()
    if args.runs_csv:
        results.to_csv(args.runs_csv, index=False)
    return results


def run_tasks(function, tasks: list[tuple], jobs: int) -> list:
    """``function(*task)`` for every task, in order; in ``jobs`` processes when ``jobs > 1``."""
    if jobs <= 1:
        return [function(*task) for task in tasks]
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(jobs) as pool:
        futures = [pool.submit(function, *task) for task in tasks]
        return [future.result() for future in futures]
