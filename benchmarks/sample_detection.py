"""Recall and false quarantine of ``poisonguard scan`` on the bundled loans sample, per injection kind.

    python -m benchmarks.sample_detection [--out DIR] [--no-reference]

Runs the real scan flow (Prefect ephemeral mode) with the sample's reference, reads the quarantine
Parquet file and compares it with ``data_samples/loans_batch_truth.csv``. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pandas as pd

SAMPLES = Path(__file__).resolve().parent.parent / "data_samples"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="output directory (default: a temporary one)")
    parser.add_argument("--no-reference", action="store_true", help="scan without the trusted reference")
    args = parser.parse_args()

    from poisonguard.prefect_env import prepare_prefect_environment

    prepare_prefect_environment()
    from poisonguard import ROW_ID
    from poisonguard.config import ScanConfig
    from poisonguard.flows.scan import scan_batch
    from poisonguard.write.outputs import OutputPaths

    out_dir = args.out or Path(tempfile.mkdtemp(prefix="poisonguard-sample-"))
    config = ScanConfig(
        label_col="risk_grade",
        dataset="loans",
        reference=None if args.no_reference else SAMPLES / "loans_reference.csv",
        out_dir=out_dir,
        suite_dir=out_dir / "no-stored-suites",  # the suite is inferred from the reference, or absent
        force=True,
    )
    started = time.perf_counter()
    summary = scan_batch(SAMPLES / "loans_batch.csv", config)
    seconds = time.perf_counter() - started
    quarantine = OutputPaths.for_batch(out_dir, summary.dataset, summary.batch_id).quarantine
    held = set(pd.read_parquet(quarantine)[ROW_ID]) if quarantine.exists() else set()
    truth = pd.read_csv(SAMPLES / "loans_batch_truth.csv")
    caught = truth[ROW_ID].isin(held)
    clean_ids = set(range(summary.rows_in)) - set(truth[ROW_ID])

    print(f"reference: {'none' if args.no_reference else 'data_samples/loans_reference.csv'}; "
          f"scan flow {seconds:.1f} s (Prefect ephemeral)\n")
    print("| injection | rows | quarantined | recall |")
    print("|---|---:|---:|---:|")
    for kind, group in caught.groupby(truth["injection"]):
        print(f"| {kind} | {len(group)} | {int(group.sum())} | {group.mean():.2f} |")
    print(f"| **all poisoned** | {len(caught)} | {int(caught.sum())} | {caught.mean():.2f} |")
    false_held = len(clean_ids & held)
    print(f"\nfalse quarantine: {false_held} of {len(clean_ids)} clean rows ({false_held / len(clean_ids):.2%})")


if __name__ == "__main__":
    main()
