"""poisonguard's ECOD (ECDFs of the fitted rows, binary search) beside PyOD's ECOD, in one run.

    python -m benchmarks.ecod_scoring [--fit 100000] [--score 200000] [--features 20] [--repeats 3]

Prints a markdown table of median wall seconds (fit + score) and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fit", type=int, default=100_000)
    parser.add_argument("--score", type=int, default=200_000)
    parser.add_argument("--features", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from pyod.models.ecod import ECOD

    from poisonguard.detectors.outliers import ECODDetector

    rng = np.random.default_rng(0)
    train = rng.normal(size=(args.fit, args.features))
    batch = rng.normal(size=(args.score, args.features))
    ours, pyod = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(args.repeats):  # alternate, so both see the same machine state
            started = time.perf_counter()
            ECODDetector().fit(train).decision_function(batch)
            ours.append(time.perf_counter() - started)
            started = time.perf_counter()
            ECOD(n_jobs=1).fit(train).decision_function(batch)
            pyod.append(time.perf_counter() - started)
    ours_s, pyod_s = statistics.median(ours), statistics.median(pyod)
    print("| fit x score x features | poisonguard ECOD | PyOD ECOD | ratio |")
    print("|---|---:|---:|---:|")
    print(f"| {args.fit:,} x {args.score:,} x {args.features} | {ours_s:.2f} s | {pyod_s:.2f} s | {ours_s / pyod_s:.2f} |")


if __name__ == "__main__":
    main()
