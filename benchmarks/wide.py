"""Wide batches: scan time and false quarantine of clean i.i.d. rows with many columns and a small reference.

    python -m benchmarks.wide [--rows 500] [--columns 2000] [--seeds 3] [--gx-columns 100] [--tails]

* **scan** (per seed): ``throughput.make_data``'s three Gaussian classes, ``--columns`` features, a batch
  of ``--rows`` clean rows and a reference of as many, scanned with the default settings in a fresh
  process (as ``benchmarks.throughput`` does). Every batch row is clean, so every quarantined row is a
  false quarantine; the table splits them into rows failing an inferred range and rows flagged by a
  detector. Medians and worst over the seeds.
* **validation side by side**: the row-level expectations of the first ``--gx-columns`` columns run once
  through Great Expectations and once vectorised (``poisonguard.expectations.row_checks``) on the same
  coerced frame, with the failing rows compared.
* ``--tails``: the range rule alone on synthetic columns with known tails (Gaussian, Laplace, lognormal,
  Student t with 3 degrees of freedom): the share of fresh rows failing any range, against the rule of
  observed range plus margin.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.throughput import _in_fresh_process, make_data


def scan_seed(rows: int, columns: int, seed: int, work: Path) -> dict:
    directory = work / f"seed-{seed}"
    directory.mkdir(parents=True, exist_ok=True)
    batch, reference = make_data(rows, columns, directory, reference_rows=rows, seed=seed)
    measured = _in_fresh_process("scan", batch, reference, directory / "out", {})
    (report_path,) = (directory / "out" / "reports" / "throughput").glob("*.json")
    report = json.loads(report_path.read_text())
    import pandas as pd

    held = None
    if report["rows"]["quarantined"]:
        held = pd.read_parquet(directory / "out" / report["outputs"]["quarantine"])
    by_range = by_detector = 0
    if held is not None:
        codes = held["_reasons"].map(list)
        by_range = int(codes.map(lambda c: any(r.startswith("schema:range:") for r in c)).sum())
        by_detector = int(codes.map(lambda c: any(not r.startswith("schema:") for r in c)).sum())
    return {
        "seconds": measured["seconds"],
        "validate_s": measured["steps"].get("validate", float("nan")),
        "false_quarantine": report["rows"]["quarantined"] / rows,
        "by_range": by_range / rows,
        "by_detector": by_detector / rows,
    }


def validation_side_by_side(rows: int, columns: int, work: Path) -> dict:
    """GX and the vectorised checks on the same coerced frame, over the first ``columns`` columns."""
    import pandas as pd

    from poisonguard import ROW_ID
    from poisonguard.expectations.row_checks import evaluate, expectation_key, from_gx_result
    from poisonguard.expectations.suite import infer_suite
    from poisonguard.expectations.validate import SHORT_NAMES, SchemaValidator

    (work / "side-by-side").mkdir(parents=True, exist_ok=True)
    batch, reference = make_data(rows, columns, work / "side-by-side", reference_rows=rows, seed=0)
    frame = pd.read_parquet(batch)
    frame.insert(0, ROW_ID, np.arange(len(frame), dtype="int64"))
    suite = infer_suite(pd.read_parquet(reference), "wide", "label", range_false_quarantine=0.001)
    row_level = [e for e in suite.expectations if e.expectation_type in SHORT_NAMES]
    validator = SchemaValidator()
    started = time.perf_counter()
    gx_results = validator.run(frame, row_level)
    gx_s = time.perf_counter() - started
    started = time.perf_counter()
    ours = [evaluate(e, frame) for e in row_level]
    ours_s = time.perf_counter() - started
    theirs = {expectation_key(r.expectation_config.type, r.expectation_config.kwargs): from_gx_result(r)
              for r in gx_results}
    agree = all(
        sorted(check.failing.tolist())
        == sorted(theirs[expectation_key(e.expectation_type, e.configuration.kwargs)].failing.tolist())
        for e, check in zip(row_level, ours)
    )
    return {"expectations": len(row_level), "gx_s": gx_s, "vectorised_s": ours_s, "agree": agree}


def tails_table(seeds: int) -> list[str]:
    from poisonguard.expectations.ranges import range_bounds

    lines = ["| tail | columns | reference rows | rows failing a range, mean (worst) | observed range + 10% |",
             "|---|---:|---:|---:|---:|"]
    for name in ("gaussian", "laplace", "lognormal", "student t(3)"):
        for columns, n in ((2000, 500), (200, 300), (10, 1000)):
            new_rule, old_rule = [], []
            for seed in range(seeds):
                rng = np.random.default_rng(seed)
                draw = {"gaussian": rng.normal, "laplace": rng.laplace, "lognormal": rng.lognormal,
                        "student t(3)": lambda size: rng.standard_t(3, size=size)}[name]
                reference, fresh = draw(size=(n, columns)), draw(size=(5000, columns))
                for rule, share in ((new_rule, 0.001), (old_rule, None)):
                    bounds = np.array([range_bounds(reference[:, j], columns, share, 0.1) for j in range(columns)])
                    rule.append(float(((fresh < bounds[:, 0]) | (fresh > bounds[:, 1])).any(axis=1).mean()))
            lines.append(f"| {name} | {columns:,} | {n:,} | {statistics.mean(new_rule):.2%} ({max(new_rule):.2%}) "
                         f"| {statistics.mean(old_rule):.2%} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=500)
    parser.add_argument("--columns", type=int, default=2000)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--gx-columns", type=int, default=100, help="columns for the GX side-by-side (0: skip)")
    parser.add_argument("--tails", action="store_true", help="only the range rule on known tails")
    args = parser.parse_args()
    if args.tails:
        print("\n".join(tails_table(args.seeds)))
        return
    with tempfile.TemporaryDirectory(prefix="poisonguard-wide-") as folder:
        work = Path(folder)
        runs = [scan_seed(args.rows, args.columns, seed, work) for seed in range(args.seeds)]
        print(f"{args.rows:,} clean rows x {args.columns:,} columns, reference of {args.rows:,} rows, default "
              f"settings (budget 1%, ranges 0.1%); median (worst) over {args.seeds} seeds\n")
        print("| scan s | validate s | false quarantine | by a range | by a detector |")
        print("|---:|---:|---:|---:|---:|")

        def cell(key: str, fmt: str) -> str:
            values = [r[key] for r in runs]
            return f"{statistics.median(values):{fmt}} ({max(values):{fmt}})"

        print(f"| {cell('seconds', '.1f')} | {cell('validate_s', '.2f')} | {cell('false_quarantine', '.2%')} "
              f"| {cell('by_range', '.2%')} | {cell('by_detector', '.2%')} |")
        if args.gx_columns:
            side = validation_side_by_side(args.rows, args.gx_columns, work)
            print(f"\nRow-level validation of {args.gx_columns} columns ({side['expectations']} expectations) on "
                  f"{args.rows} rows: Great Expectations {side['gx_s']:.2f} s, vectorised {side['vectorised_s']:.3f} s "
                  f"({side['gx_s'] / side['vectorised_s']:.0f}x); same failing rows: {side['agree']}")


if __name__ == "__main__":
    main()
