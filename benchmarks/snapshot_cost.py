"""What reading a batch once into a private snapshot costs beside hashing it in place, side by side.

    python -m benchmarks.snapshot_cost [--rows 1000000] [--features 20] [--repeats 5]

A scan copies the batch into ``<out>/.snapshots/`` while hashing it (``ingest.snapshot_file``), where it
used to hash the file and then parse the file again. The table gives the median seconds of each over
``--repeats`` alternating runs on ``throughput.make_data``'s Parquet batch, and the same batch as CSV.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.throughput import make_data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--features", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    import pandas as pd

    from poisonguard.ingest.read import file_sha256, snapshot_file

    with tempfile.TemporaryDirectory(prefix="poisonguard-snapshot-") as folder:
        work = Path(folder)
        parquet, _ = make_data(args.rows, args.features, work, reference_rows=2)
        csv = work / "batch.csv"
        pd.read_parquet(parquet).to_csv(csv, index=False)
        print(f"{args.rows:,} rows x {args.features} features; median of {args.repeats} runs\n")
        print("| file | MB | hash in place s | snapshot while hashing s | ratio |")
        print("|---|---:|---:|---:|---:|")
        for path in (parquet, csv):
            hashed, copied = [], []
            for _ in range(args.repeats):
                started = time.perf_counter()
                file_sha256(path)
                hashed.append(time.perf_counter() - started)
                started = time.perf_counter()
                snapshot_file(path, work / "snapshots")
                copied.append(time.perf_counter() - started)
                shutil.rmtree(work / "snapshots")
            h, c = statistics.median(hashed), statistics.median(copied)
            print(f"| {path.suffix[1:]} | {path.stat().st_size / 2**20:,.0f} | {h:.2f} | {c:.2f} | {c / h:.2f} |")


if __name__ == "__main__":
    main()
