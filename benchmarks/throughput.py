"""End-to-end ``scan`` speed and memory beside PyOD's ECOD and Isolation Forest on the same data, in one run.

    python -m benchmarks.throughput [--rows 10000,100000,1000000] [--repeats 3] [--task-runners default,dask]
                                    [--chunk-rows N --reference-rows N --no-pyod] [--baseline-python PATH]
                                    [--write]

For each size: a synthetic batch (``--features`` numeric columns and a three-class label: three
Gaussian classes) written as Parquet, and a trusted reference half its size (or ``--reference-rows``).
Each measurement runs in a fresh Python process, so peak RSS (``ru_maxrss``) belongs to it alone:

* **scan**: the flow ``run_scan`` picks for the settings: Prefect's default task runner or Dask with 2
  workers (``--task-runners``), the whole batch at once or the chunked flow for batches larger than memory
  (``--chunk-rows``). It reads Parquet, infers and runs the Great Expectations suite, scores with the
  default detectors, and writes clean and quarantine Parquet and the JSON and HTML reports. Prefect's
  temporary server is started, and Great Expectations, PyOD, scikit-learn and matplotlib imported, before
  the clock and the memory baseline, as a served or scheduled flow finds them after its first run; the
  server runs in its own process and is not in the RSS.
* **PyOD**: what a competent user of PyOD alone would run for the same job: ``ECOD`` and ``IForest``, each
  with ``n_jobs`` = every core (the threads the scan uses), fitted on the rows the scan fits on (the
  reference subsampled to ``max_reference_rows``, its first half) and scoring the batch and the other half
  (the scan scores its held-out rows too). Loading the arrays is not timed. ``--no-pyod`` skips it (PyOD's
  ECOD needs about 2.7 GB per million rows).
* **baseline** (``--baseline-python``): the same scan measurement run by another interpreter, one whose
  environment has an earlier commit of poisonguard installed, alternating with this one: a before/after
  comparison in one run on one machine state.

The table gives medians over ``--repeats`` runs (the two alternate, so both see the same machine state),
the scan/ECOD time ratio, and memory: peak RSS, and the peak above the process's RSS just before it read
the data, as a multiple of the batch frame's in-memory size.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

LABEL = "label"
GENERATED_ROW_GROUP = 250_000


def make_data(rows: int, features: int, directory: Path, reference_rows: int | None = None,
              seed: int = 0) -> tuple[Path, Path]:
    """Write ``batch.parquet`` (``rows`` rows) and ``reference.parquet`` (half as many, or ``reference_rows``).

    Three Gaussian classes whose means differ in half of the features, written a row group at a time so
    that even 5 million rows never sit in this process's memory at once.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    means = np.random.default_rng(seed).normal(scale=1.5, size=(3, features))
    means[:, features // 2:] = 0.0
    names = [f"f{i:02d}" for i in range(features)]

    def write(path: Path, n_rows: int, stream: int) -> None:
        with pq.ParquetWriter(path, pa.schema([*(pa.field(n, pa.float64()) for n in names),
                                               pa.field(LABEL, pa.int64())])) as writer:
            for start in range(0, n_rows, GENERATED_ROW_GROUP):
                rng = np.random.default_rng([seed, stream, start])
                size = min(GENERATED_ROW_GROUP, n_rows - start)
                labels = rng.integers(0, 3, size)
                values = means[labels] + rng.normal(size=(size, features))
                writer.write_table(pa.table({**{n: values[:, i] for i, n in enumerate(names)}, LABEL: labels}))

    batch, reference = directory / "batch.parquet", directory / "reference.parquet"
    write(batch, rows, stream=1)
    write(reference, reference_rows or max(rows // 2, 200), stream=2)
    return batch, reference


def _current_rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


def measure_scan(batch: Path, reference: Path, out_dir: Path, settings: dict) -> dict:
    """Run the scan flow once in this process; return seconds, RSS figures and the flow's step timings."""
    from poisonguard.prefect_env import prepare_prefect_environment

    prepare_prefect_environment()
    from prefect import flow

    from poisonguard.config import ScanConfig
    from poisonguard.flows.scan import run_scan
    from poisonguard.report.scan_report import read_report

    @flow(name="benchmark-warm-up")
    def warm_up() -> None:
        """Start Prefect's temporary server before the clock."""

    warm_up()
    # A served flow has these imported after its first run; their import is not per-batch work.
    import great_expectations  # noqa: F401
    import matplotlib.pyplot  # noqa: F401
    import pyod.models.iforest  # noqa: F401
    import sklearn.neural_network  # noqa: F401

    config = ScanConfig(label_col=LABEL, dataset="throughput", reference=reference, out_dir=out_dir,
                        suite_dir=out_dir / "no-stored-suites", force=True).with_overrides(**settings)
    baseline = _current_rss_mb()
    started = time.perf_counter()
    summary = run_scan(batch, config)
    seconds = time.perf_counter() - started
    report = read_report(summary.report_path) or {}
    return {
        "seconds": seconds,
        "peak_rss_mb": _peak_rss_mb(),
        "baseline_rss_mb": baseline,
        "rows_in": summary.rows_in,
        "rows_quarantined": summary.rows_quarantined,
        "steps": _with_rest(report.get("timings_seconds", {}), seconds),
    }


def _with_rest(steps: dict[str, float], total: float) -> dict[str, float]:
    """The flow's step timings plus ``report and rest``: what the steps do not cover (reports, Prefect)."""
    return steps | {"report and rest": max(total - sum(steps.values()), 0.0)}


def measure_pyod(batch: Path, reference: Path) -> dict:
    """PyOD's ECOD and IForest on the scan's fit rows, scoring the batch and the held-out rows; see the
    module docstring. Returns seconds (both, and each) and RSS figures."""
    import warnings

    import pandas as pd
    from pyod.models.ecod import ECOD
    from pyod.models.iforest import IForest

    from poisonguard.config import ScanConfig

    config = ScanConfig()
    baseline = _current_rss_mb()
    used = pd.read_parquet(reference).drop(columns=[LABEL])
    used = used.sample(n=min(len(used), config.calibration.max_reference_rows), random_state=0).to_numpy(dtype="float64")
    fit_rows = used[: len(used) - int(len(used) * config.calibration.holdout_fraction)]
    scored = np.vstack([pd.read_parquet(batch).drop(columns=[LABEL]).to_numpy(dtype="float64"), used[len(fit_rows):]])
    del used
    cores = os.cpu_count() or 1
    seconds = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, model in (("ecod", ECOD(n_jobs=cores)), ("iforest", IForest(n_jobs=cores, random_state=0))):
            started = time.perf_counter()
            model.fit(fit_rows).decision_function(scored)
            seconds[name] = time.perf_counter() - started
            del model
    return {"seconds": sum(seconds.values()), "ecod_seconds": seconds["ecod"], "iforest_seconds": seconds["iforest"],
            "peak_rss_mb": _peak_rss_mb(), "baseline_rss_mb": baseline}


def _in_fresh_process(kind: str, batch: Path, reference: Path, out_dir: Path, settings: dict,
                      python: str | None = None) -> dict:
    """One measurement in a new process: this checkout's, or (``python``) that of the checkout installed for
    another interpreter, run from its own tree so that none of this tree's modules shadow it."""
    command = [python or sys.executable, "-m", "benchmarks.throughput", "--measure", kind, "--batch", str(batch),
               "--reference", str(reference), "--out", str(out_dir), "--settings", json.dumps(settings)]
    root = _checkout_of(python) if python else Path(__file__).resolve().parent.parent
    done = subprocess.run(command, capture_output=True, text=True, cwd=root)
    if done.returncode != 0:
        raise RuntimeError(f"{kind} measurement failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _checkout_of(python: str) -> Path:
    """The source tree of the poisonguard that ``python`` imports (an editable install of another commit)."""
    found = subprocess.run([python, "-c", "import poisonguard; print(poisonguard.__file__)"], capture_output=True,
                           text=True, cwd="/", check=True)
    return Path(found.stdout.strip()).resolve().parent.parent


def frame_mb(batch: Path) -> float:
    import pandas as pd

    return float(pd.read_parquet(batch).memory_usage(deep=True).sum()) / 2**20


def run(sizes: list[int], features: int, repeats: int, settings: dict, work: Path,
        runners: tuple[str, ...] = ("default",), reference_rows: int | None = None,
        with_pyod: bool = True, baseline_python: str | None = None) -> list[dict]:
    """One table row per size and task runner (and for the baseline interpreter, when given); measurements
    of a size alternate so all share its state."""
    rows = []
    for size in sizes:
        directory = work / f"rows-{size}"
        directory.mkdir(parents=True, exist_ok=True)
        batch, reference = make_data(size, features, directory, reference_rows)
        scans: dict[str, list[dict]] = {runner: [] for runner in runners}
        if baseline_python:
            scans["baseline"] = []
        pyods = []
        for repeat in range(repeats):
            for runner in scans:
                out = directory / f"out-{runner}-{repeat}"
                python = baseline_python if runner == "baseline" else None
                run_settings = settings | {"task_runner": "default" if runner == "baseline" else runner}
                scans[runner].append(_in_fresh_process("scan", batch, reference, out, run_settings, python))
            if with_pyod:
                pyods.append(_in_fresh_process("pyod", batch, reference, directory, {}))
            print(f"rows {size:,} run {repeat + 1}: "
                  + ", ".join(f"scan ({r}) {scans[r][-1]['seconds']:.1f} s" for r in scans)
                  + (f", PyOD {pyods[-1]['seconds']:.1f} s" if pyods else ""), file=sys.stderr)
        pyod_s = statistics.median(e["seconds"] for e in pyods) if pyods else float("nan")
        default_s = statistics.median(s["seconds"] for s in scans[runners[0]])
        for runner, runs in scans.items():
            scan_s = statistics.median(s["seconds"] for s in runs)
            rows.append({
                "rows": size,
                "runner": runner,
                "input_mb": frame_mb(batch),
                "scan_s": scan_s,
                "speed_up": default_s / scan_s,
                "pyod_s": pyod_s,
                "pyod_ecod_s": statistics.median(e["ecod_seconds"] for e in pyods) if pyods else float("nan"),
                "pyod_iforest_s": statistics.median(e["iforest_seconds"] for e in pyods) if pyods else float("nan"),
                "scan_peak_mb": statistics.median(s["peak_rss_mb"] for s in runs),
                "scan_above_mb": statistics.median(s["peak_rss_mb"] - s["baseline_rss_mb"] for s in runs),
                "pyod_peak_mb": statistics.median(e["peak_rss_mb"] for e in pyods) if pyods else float("nan"),
                "steps": {
                    name: statistics.median(s["steps"].get(name, 0.0) for s in runs)
                    for name in dict.fromkeys(step for s in runs for step in s["steps"])
                },
            })
    return rows


def to_markdown(rows: list[dict], repeats: int, chunk_rows: int | None = None,
                reference_rows: int | None = None) -> str:
    runners = list(dict.fromkeys(r["runner"] for r in rows))
    reference = f"{reference_rows:,} rows" if reference_rows else "half the batch's rows"
    mode = f"chunks of {chunk_rows:,} rows (`--chunk-rows`)" if chunk_rows else "the whole batch at once"
    lines = [
        f"Medians of {repeats} runs on {os.cpu_count()} cores; scanned {mode}. Reference: {reference}. Default "
        "detectors (ecod, iforest, label_model). PyOD: its ECOD and IForest with n_jobs = every core, fitted on "
        "the rows the scan fits on and scoring the batch and the held-out rows (the scan scores both). "
        f"`speed-up` is the first runner's ({runners[0]}) median time over this runner's; `baseline` is an "
        "earlier commit run by `--baseline-python`, alternating with this one.",
        "",
        "| rows | task runner | scan s | scan rows/s | speed-up | PyOD ECOD + IForest s (ECOD, IForest) "
        "| scan / PyOD | input frame MB | scan peak RSS MB | scan peak above start MB | above start / input "
        "| PyOD peak RSS MB |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['rows']:,} | {r['runner']} | {r['scan_s']:.1f} | {r['rows'] / r['scan_s']:,.0f} "
            f"| {r['speed_up']:.2f} | {r['pyod_s']:.1f} ({r['pyod_ecod_s']:.1f}, {r['pyod_iforest_s']:.1f}) "
            f"| {r['scan_s'] / r['pyod_s']:.2f} | {r['input_mb']:.0f} "
            f"| {r['scan_peak_mb']:.0f} | {r['scan_above_mb']:.0f} | {r['scan_above_mb'] / r['input_mb']:.1f}x "
            f"| {r['pyod_peak_mb']:.0f} |"
        )
    steps = list(dict.fromkeys(step for r in rows for step in r["steps"]))
    lines += ["", "Scan steps, median seconds (the flow's own `timings_seconds`):", "",
              "| rows | task runner | " + " | ".join(steps) + " |", "|---:|---|" + "---:|" * len(steps)]
    for r in rows:
        lines.append(f"| {r['rows']:,} | {r['runner']} | "
                     + " | ".join(f"{r['steps'].get(s, 0.0):.2f}" for s in steps) + " |")
    first = [r for r in rows if r["runner"] == runners[0]]
    if len(first) >= 2:
        small, large = first[-2], first[-1]
        growth = (large["scan_s"] / small["scan_s"]) / (large["rows"] / small["rows"])
        lines += ["", f"Growth from {small['rows']:,} to {large['rows']:,} rows ({runners[0]} runner): scan time "
                      f"x{large['scan_s'] / small['scan_s']:.1f} for x{large['rows'] / small['rows']:.0f} rows "
                      f"({growth:.2f} of linear)."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="10000,100000,1000000", help="comma-separated batch sizes")
    parser.add_argument("--features", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--task-runners", default="default",
                        help="comma-separated task runners to compare, e.g. default,dask (2 Dask workers)")
    parser.add_argument("--chunk-rows", type=int, default=None,
                        help="scan in chunks of this many rows (batches larger than memory)")
    parser.add_argument("--reference-rows", type=int, default=None, help="reference size (default: half the batch)")
    parser.add_argument("--no-pyod", action="store_true", help="skip the PyOD run (its ECOD needs ~2.7 GB per 1M rows)")
    parser.add_argument("--baseline-python", default=None,
                        help="also measure the scan with this interpreter (an earlier commit installed), alternating")
    parser.add_argument("--work", type=Path, default=None, help="where data and outputs go (default: temporary)")
    parser.add_argument("--write", action="store_true", help="write the table into benchmarks/RESULTS.md")
    # One measurement in this process (what ``run`` calls in a fresh process per measurement).
    parser.add_argument("--measure", choices=["scan", "pyod"], help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--reference", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--settings", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.features < 3:
        parser.error("--features must be at least 3 (three label classes need three informative features)")

    if args.measure == "scan":
        print(json.dumps(measure_scan(args.batch, args.reference, args.out, json.loads(args.settings))))
        return
    if args.measure == "pyod":
        print(json.dumps(measure_pyod(args.batch, args.reference)))
        return

    sizes = [int(size) for size in args.rows.split(",") if size]
    with tempfile.TemporaryDirectory(prefix="poisonguard-throughput-") as scratch:
        work = args.work or Path(scratch)
        # One Prefect home for every run: its database is created once, not per measurement.
        os.environ.setdefault("PREFECT_HOME", str(work / "prefect-home"))
        runners = tuple(r for r in args.task_runners.split(",") if r)
        settings = {"dask_workers": 2} | ({"chunk_rows": args.chunk_rows} if args.chunk_rows else {})
        rows = run(sizes, args.features, args.repeats, settings, work, runners, args.reference_rows,
                   with_pyod=not args.no_pyod, baseline_python=args.baseline_python)
    markdown = to_markdown(rows, args.repeats, args.chunk_rows, args.reference_rows)
    print(markdown)
    if args.write:
        from benchmarks.results import write_section

        if args.chunk_rows:
            write_section("throughput", f"Throughput of chunked scans ({args.chunk_rows:,} rows a chunk)", markdown,
                          section="throughput-chunked")
        else:
            write_section("throughput", "Throughput: end-to-end scan beside PyOD ECOD and IForest", markdown)


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
