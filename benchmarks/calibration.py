"""The null benchmark: how many clean rows a scan quarantines, against the budget it promises.

    python -m benchmarks.calibration [--seeds 100] [--sizes 100,300,1000,3000,30000] [--datasets ...]
                                     [--batch-rows 2000] [--budget 0.01] [--jobs 2] [--runs-csv FILE] [--write]
    python -m benchmarks.calibration --from-csv a.csv,b.csv [--write]   # the table of runs saved before

No row is poisoned. For each dataset, reference size and seed, a trusted reference and a batch are drawn
from the same rows without overlap (a size is skipped where the dataset has too few rows for it and 50
batch rows), the schema suite is inferred from the reference as a scan infers it, the batch is validated
against it and scored by the default detectors with the reference, exactly as ``poisonguard scan`` does
with ``--max-false-quarantine`` = ``--budget``. Every quarantined batch row is a false quarantine.

Reported per dataset and reference size, over the seeds: the mean share of batch rows quarantined, the
share of runs above the budget, the worst run; the same split by cause (schema rules a clean row can fail
by chance: ranges and unseen categories; hard schema failures; detectors); and the guarantee the scan's
report claimed. ``--write`` puts the table into ``benchmarks/RESULTS.md``.

Datasets: scikit-learn's digits, breast_cancer and wine; ``make_classification`` with 3 and with 10
classes (20 features, 10 informative); and a mixed table (numeric, heavy-tailed numeric, categorical and
free-text columns, generated here).
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import numpy as np
import pandas as pd

from benchmarks.attacks import LABEL
from benchmarks.results import add_run_arguments, run_tasks, runs_of
from benchmarks.scanning import process_validator, scan_rows

DATASETS = ("digits", "breast_cancer", "wine", "classification3", "classification10", "mixed")
SIZES = (100, 300, 1_000, 3_000, 30_000)
MIN_BATCH_ROWS = 50
GENERATED_ROWS = 40_000


def dataset_rows(name: str, seed: int) -> pd.DataFrame:
    """The rows of ``name`` in a seeded order (generated ones: ``GENERATED_ROWS`` of them)."""
    from sklearn import datasets

    rng = np.random.default_rng(seed)
    if name in ("digits", "breast_cancer", "wine"):
        from benchmarks.attacks import load_dataset

        return load_dataset(name, seed)
    if name.startswith("classification"):
        X, y = datasets.make_classification(
            n_samples=GENERATED_ROWS, n_features=20, n_informative=10, n_classes=int(name.removeprefix("classification")),
            random_state=seed,
        )
        frame = pd.DataFrame(X, columns=[f"f{i}" for i in range(X.shape[1])])
        frame[LABEL] = y.astype(str)
        return frame
    if name == "mixed":
        n = GENERATED_ROWS
        label = rng.integers(0, 3, n)
        words = np.array(["alpha", "beta", "gamma", "delta", "omega", "sigma", "kappa", "theta", "zeta", "eta"])
        categories = np.array([f"c{i}" for i in range(12)])
        weights = 1.0 / np.arange(1, 13)
        return pd.DataFrame({
            "amount": rng.lognormal(3.0 + 0.3 * label, 0.8),
            "score": rng.normal(600 + 20 * label, 50),
            "age": rng.integers(18, 90, n).astype("float64"),
            "region": rng.choice(categories, n, p=weights / weights.sum()),
            "note": [" ".join(rng.choice(words, 3)) for _ in range(n)],
            LABEL: label.astype(str),
        })
    raise ValueError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")


def null_run(rows: pd.DataFrame, reference_rows: int, batch_rows: int, budget: float, seed: int,
             validator) -> dict:
    """One clean scan: shares of batch rows quarantined, in all and by cause, and the claimed guarantee."""
    from poisonguard.config import ScanConfig

    order = np.random.default_rng([seed, reference_rows]).permutation(len(rows))
    reference = rows.iloc[order[:reference_rows]].reset_index(drop=True)
    batch = rows.iloc[order[reference_rows : reference_rows + batch_rows]].reset_index(drop=True)
    config = ScanConfig(label_col=LABEL, max_false_quarantine=budget, seed=seed)
    scanned = scan_rows(batch, reference, LABEL, config, validator)
    return {
        "quarantined": float(scanned.quarantined.mean()),
        "schema_judgement": float(scanned.schema_judgement.mean()),
        "schema_hard": float(scanned.schema_hard.mean()),
        "detectors": float(scanned.detectors.mean()),
        "guarantee": scanned.guarantee,
    }


def _one_run(name: str, size: int, seed: int, batch_rows: int, budget: float) -> dict | None:
    """One clean scan as a record, or ``None`` where the dataset has too few rows for ``size``."""
    validator = process_validator()
    rows = dataset_rows(name, seed)
    if len(rows) < size + MIN_BATCH_ROWS:
        return None
    started = time.perf_counter()
    result = null_run(rows, size, min(batch_rows, len(rows) - size), budget, seed, validator)
    return {"dataset": name, "reference_rows": size, "seed": seed, **result,
            "seconds": time.perf_counter() - started}


def run(datasets: list[str], sizes: list[int], seeds: int, batch_rows: int, budget: float,
        jobs: int = 1) -> pd.DataFrame:
    """Every (dataset, size, seed) scan, in ``jobs`` processes; records in that order."""
    tasks = [(name, size, seed, batch_rows, budget) for name in datasets for size in sizes for seed in range(seeds)]
    records = run_tasks(_one_run, tasks, jobs)
    return pd.DataFrame.from_records([record for record in records if record is not None])


def table(results: pd.DataFrame, budget: float) -> str:
    lines = [
        "| dataset | reference rows | runs | mean quarantined | runs above budget | worst | worst / budget | "
        "mean: ranges & unseen values | mean: detectors | report's guarantee |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for (name, size), group in results.groupby(["dataset", "reference_rows"], sort=False):
        share = group["quarantined"]
        claims = ", ".join(f"{claim} ({count})" for claim, count in group["guarantee"].value_counts().items())
        lines.append(
            f"| {name} | {size:,} | {len(group)} | {share.mean():.2%} | {(share > budget).mean():.0%} | "
            f"{share.max():.2%} | {share.max() / budget:.1f} | {group['schema_judgement'].mean():.2%} | "
            f"{group['detectors'].mean():.2%} | {claims} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=100)
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)))
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--batch-rows", type=int, default=2_000)
    parser.add_argument("--budget", type=float, default=0.01)
    add_run_arguments(parser, "scans")
    parser.add_argument("--write", action="store_true", help="write the table into benchmarks/RESULTS.md")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    started = time.perf_counter()
    results = runs_of(args, lambda: run(args.datasets.split(","), [int(s) for s in args.sizes.split(",")],
                                        args.seeds, args.batch_rows, args.budget, args.jobs))
    body = table(results, args.budget)
    seconds = statistics.median(results["seconds"]) if len(results) else 0.0
    body += (f"\n\n{len(results)} clean scans, {args.budget:.0%} budget, median {seconds:.1f} s a scan"
             + ("." if args.from_csv else f", {time.perf_counter() - started:.0f} s in all."))
    print(body)
    if args.write:
        from benchmarks.results import write_section

        write_section("calibration", "Null benchmark: false quarantine of clean batches against the budget", body)


if __name__ == "__main__":
    main()
