"""Detection on the held-out attack suite (:mod:`benchmarks.heldout_suite`), by the default command.

    python -m benchmarks.heldout [--seeds 5] [--cases SUBSTRING] [--jobs 2] [--runs-csv FILE] [--write]
    python -m benchmarks.heldout --from-csv a.csv,b.csv [--write]   # the table of runs saved before

Every case and seed is scanned twice in this process, as ``poisonguard scan`` would scan it with its
default settings: with the case's trusted reference, and without one. Nothing is chosen per case: one preset,
poisonguard's own threshold. Reported per case over the seeds: recall (share of poisoned rows quarantined)
and false quarantine (share of clean rows quarantined, schema rules included), mean and worst.

This suite judges; it never tunes. See the suite's docstring.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import pandas as pd

from benchmarks.attacks import LABEL
from benchmarks.heldout_suite import CASES, Case, make_case
from benchmarks.scanning import scan_rows

_VALIDATOR = None


def _one_run(case: Case, seed: int) -> list[dict]:
    """The case scanned with and without its reference, as two records."""
    global _VALIDATOR  # one Great Expectations validator per process: building it costs seconds
    from poisonguard.config import ScanConfig

    if _VALIDATOR is None:
        from poisonguard.expectations.validate import SchemaValidator

        _VALIDATOR = SchemaValidator()
    warnings.filterwarnings("ignore")
    data = make_case(case, seed)
    records = []
    for reference in (data.reference, None):
        started = time.perf_counter()
        scanned = scan_rows(data.batch, reference, LABEL, ScanConfig(label_col=LABEL, seed=seed), _VALIDATOR)
        records.append({
            "case": case.name, "dataset": case.dataset, "attack": case.attack, "rate": case.rate,
            "reference_rows": case.reference_rows if reference is not None else 0, "batch_rows": case.batch_rows,
            "seed": seed, "recall": float(scanned.quarantined[data.mask].mean()),
            "false_quarantine": float(scanned.quarantined[~data.mask].mean()),
            "guarantee": scanned.guarantee, "seconds": time.perf_counter() - started,
        })
    return records


def run(cases: list[Case], seeds: int, jobs: int = 1) -> pd.DataFrame:
    from concurrent.futures import ProcessPoolExecutor

    tasks = [(case, seed) for case in cases for seed in range(seeds)]
    if jobs > 1:
        with ProcessPoolExecutor(jobs) as pool:
            results = [future.result() for future in [pool.submit(_one_run, *task) for task in tasks]]
    else:
        results = [_one_run(*task) for task in tasks]
    return pd.DataFrame.from_records([record for pair in results for record in pair])


def table(results: pd.DataFrame) -> str:
    lines = [
        "| dataset | attack | rate | batch rows | reference rows | seeds | recall mean | recall worst | "
        "false quarantine mean | false quarantine worst | guarantee |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    keys = ["dataset", "attack", "rate", "batch_rows", "reference_rows"]
    for (dataset, attack, rate, batch_rows, reference_rows), group in results.groupby(keys, sort=False):
        claims = ", ".join(group["guarantee"].astype(str).unique())
        lines.append(
            f"| {dataset} | {attack} | {rate:.0%} | {batch_rows:,} | {reference_rows:,} | {len(group)} | "
            f"{group['recall'].mean():.2f} | {group['recall'].min():.2f} | {group['false_quarantine'].mean():.2%} | "
            f"{group['false_quarantine'].max():.2%} | {claims} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--cases", default="", help="only the cases whose name contains this")
    parser.add_argument("--jobs", type=int, default=1, help="cases scanned at once, one process each")
    parser.add_argument("--runs-csv", help="also save every run's record to this CSV")
    parser.add_argument("--from-csv", help="build the table from saved runs (comma-separated CSVs), scanning nothing")
    parser.add_argument("--write", action="store_true", help="write the table into benchmarks/RESULTS.md")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    started = time.perf_counter()
    if args.from_csv:
        results = pd.concat([pd.read_csv(path) for path in args.from_csv.split(",")], ignore_index=True)
    else:
        results = run([case for case in CASES if args.cases in case.name], args.seeds, args.jobs)
    if args.runs_csv:
        results.to_csv(args.runs_csv, index=False)
    body = table(results)
    seconds = statistics.median(results["seconds"]) if len(results) else 0.0
    body += (f"\n\n{len(results)} scans, median {seconds:.1f} s a scan"
             + ("." if args.from_csv else f", {time.perf_counter() - started:.0f} s in all."))
    print(body)
    if args.write:
        from benchmarks.results import write_section

        write_section("heldout", "Held-out attack suite: the default command on attacks it was not built around",
                      body)


if __name__ == "__main__":
    main()
