"""What cross-fitting a small reference costs the scoring step, beside a single split, in one run.

    python -m benchmarks.crossfit_cost [--reference 1000] [--batch 200000] [--repeats 3]

The same batch and reference are scored by the default detectors twice, alternating: at a 1% budget the
reference's held-out half is under 1,000 rows, so it is cross-fitted (five copies of each detector, each
scoring every batch row); at a 2% budget the same half suffices and the reference is split once.
Prints a markdown table of median wall seconds and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from benchmarks.throughput import LABEL, make_data
    from poisonguard import ROW_ID
    from poisonguard.config import ScanConfig
    from poisonguard.score.rows import score_rows

    with tempfile.TemporaryDirectory() as work:  # the throughput benchmark's data: three Gaussian classes
        batch_path, reference_path = make_data(args.batch, 20, Path(work), reference_rows=args.reference)
        batch, reference = pd.read_parquet(batch_path), pd.read_parquet(reference_path)
    batch[ROW_ID] = np.arange(len(batch))
    kinds = {c: "numeric" for c in batch.columns if c not in (LABEL, ROW_ID)}
    modes = {"cross-fitted, 1% budget": 0.01, "split once, 2% budget": 0.02}
    seconds: dict[str, list[float]] = {name: [] for name in modes}
    folds: dict[str, int] = {}
    for _ in range(args.repeats):
        for name, budget in modes.items():
            started = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                result = score_rows(batch, reference, kinds, LABEL,
                                    ScanConfig(label_col=LABEL, max_false_quarantine=budget))
            seconds[name].append(time.perf_counter() - started)
            folds[name] = result.calibration["folds"]
    split = statistics.median(seconds["split once, 2% budget"])
    print(f"{args.batch:,} batch rows, {args.reference:,} reference rows, medians of {args.repeats}\n")
    print("| calibration | folds | score seconds | / split |\n|---|---:|---:|---:|")
    for name in modes:
        median = statistics.median(seconds[name])
        print(f"| {name} | {folds[name]} | {median:.2f} | {median / split:.2f} |")


if __name__ == "__main__":
    main()
