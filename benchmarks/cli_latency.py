"""How long the README's sample scan takes from the command line, in process and as a Prefect flow.

    python -m benchmarks.cli_latency [--repeats 3] [--write]

Each repeat runs the installed ``poisonguard`` command as a user would, in a fresh output folder and a
fresh Prefect home, and times, side by side in one run:

* ``cold``: the first scan of the sample (``poisonguard scan data_samples/loans_batch.csv --dataset loans
  --label-col risk_grade --reference data_samples/loans_reference.csv``);
* ``warm``: the same command again, answered "already scanned";
* ``typo``: ``--label-col risk_grad``, a mistake reported before anything is scanned.

once in process (the default without ``PREFECT_API_URL``) and once with ``--prefect`` (a temporary Prefect
server per command). Reported: the median seconds over the repeats and the flow's median over the
in-process one. Wall-clock figures of a shared machine: compare within one run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SAMPLES = Path(__file__).resolve().parent.parent / "data_samples"
SCAN = ["scan", str(SAMPLES / "loans_batch.csv"), "--dataset", "loans", "--reference", str(SAMPLES / "loans_reference.csv")]
CALLS = {"cold": ["--label-col", "risk_grade"], "warm": ["--label-col", "risk_grade"], "typo": ["--label-col", "risk_grad"]}
EXPECTED_EXIT = {"cold": 1, "warm": 1, "typo": 2}
MODES = {"in process": ["--in-process"], "Prefect flow": ["--prefect"]}


def _command() -> str:
    return shutil.which("poisonguard") or str(Path(sys.prefix) / "bin" / "poisonguard")


def time_calls(mode_args: list[str]) -> dict[str, float]:
    """Seconds of each call of one repeat, in a fresh output folder and Prefect home."""
    folder = Path(tempfile.mkdtemp(prefix="poisonguard-latency-"))
    env = {key: value for key, value in os.environ.items() if key != "PREFECT_API_URL"}
    env["PREFECT_HOME"] = str(folder / "prefect")
    seconds = {}
    try:
        for call, extra in CALLS.items():
            started = time.perf_counter()
            done = subprocess.run([_command(), *SCAN, *extra, *mode_args, "--out", str(folder / "out")],
                                  capture_output=True, text=True, env=env, timeout=600)
            seconds[call] = time.perf_counter() - started
            if done.returncode != EXPECTED_EXIT[call]:
                raise RuntimeError(f"{call} {' '.join(mode_args)} exited {done.returncode}: {done.stderr[-2000:]}")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return seconds


def table(times: dict[str, list[dict[str, float]]]) -> str:
    medians = {mode: {call: statistics.median(r[call] for r in runs) for call in CALLS} for mode, runs in times.items()}
    lines = ["| call | in process (s) | Prefect flow (s) | flow / in process |", "|---|---:|---:|---:|"]
    for call in CALLS:
        inside, flow = medians["in process"][call], medians["Prefect flow"][call]
        lines.append(f"| {call} | {inside:.1f} | {flow:.1f} | {flow / inside:.1f}x |")
    repeats = len(next(iter(times.values())))
    return "\n".join(lines) + f"\n\nMedians of {repeats} repeats, the two modes alternating, on {os.cpu_count()} cores.\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--write", action="store_true", help="write the table into benchmarks/RESULTS.md")
    args = parser.parse_args(argv)
    times: dict[str, list[dict[str, float]]] = {mode: [] for mode in MODES}
    for _ in range(args.repeats):
        for mode, mode_args in MODES.items():  # alternating, so a busy spell of the machine hits both
            times[mode].append(time_calls(mode_args))
    body = table(times)
    print(body)
    if args.write:
        from benchmarks.results import write_section

        write_section("cli_latency", "Command-line latency: the sample scan in process and as a Prefect flow",
                      __doc__.split("\n\n", 2)[2].strip() + "\n\n" + body)


if __name__ == "__main__":
    main()
