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
import time
import warnings

import numpy as np
import pandas as pd


def _frame(rows: int, rng: np.random.Generator) -> pd.DataFrame:
    X = rng.normal(size=(rows, 20))
    frame = pd.DataFrame(X, columns=[f"f{i}" for i in range(20)])
    frame["label"] = np.where(X[:, 0] > 0, "a", "b")
    return frame


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from poisonguard import ROW_ID
    from poisonguard.config import ScanConfig
    from poisonguard.scoring import score_rows

    rng = np.random.default_rng(0)
    reference, batch = _frame(args.reference, rng), _frame(args.batch, rng)
    batch[ROW_ID] = np.arange(len(batch))
    kinds = {f"f{i}": "numeric" for i in range(20)}
    modes = {"cross-fitted, 1% budget": 0.01, "split once, 2% budget": 0.02}
    seconds: dict[str, list[float]] = {name: [] for name in modes}
    folds: dict[str, int] = {}
    for _ in range(args.repeats):
        for name, budget in modes.items():
            started = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                result = score_rows(batch, reference, kinds, "label",
                                    ScanConfig(label_col="label", max_false_quarantine=budget))
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
