"""How long ``poisonguard.scan`` takes on a DataFrame in a notebook: the first call and the ones after it.

    python -m benchmarks.api_latency [--rows 10000] [--repeats 5] [--write]

A fresh Python process draws loan applications with the bundled sample's generator
(``data_samples/make_samples.py``: a 3,000-row reference and a batch of ``--rows`` rows with the
sample's 100 poisoned rows), then times, in that one process:

* ``import``: ``import poisonguard`` and the first use of its scanning modules (pandas, scikit-learn,
  PyOD, Great Expectations), measured as the first scan's time minus a warm scan's;
* ``first scan``: the first ``poisonguard.scan(batch, label=..., reference=...)``, imports included;
* ``warm scan``: each later scan of the same frames, with and without the reference;
* ``warm sample``: the README's sample scan (``data_samples/loans_batch.csv`` against
  ``loans_reference.csv``, 2,000 rows, given as paths) in the same warm process, for comparison with the
  command line's per-process cost (``python -m benchmarks.cli_latency``).

Every scan names the dataset ``loans``, so run from the project's root it validates against the bundled
suite (``expectations/suites/loans.json``), as the README's command does. Reported: seconds (median of the
warm repeats), rows per second, and what was quarantined. Wall-clock
figures of a shared machine: compare within one run.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import time
from pathlib import Path

import numpy as np

SAMPLES = Path(__file__).resolve().parent.parent / "data_samples"


def _sample_generator():
    spec = importlib.util.spec_from_file_location("make_samples", SAMPLES / "make_samples.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def frames(rows: int, seed: int = 0):
    """A reference of 3,000 applications and a poisoned batch of ``rows`` (the sample's generator and attacks)."""
    samples = _sample_generator()
    rng = np.random.default_rng(seed)
    reference = samples.draw_applications(3_000, rng)
    batch, _ = samples.poison(samples.draw_applications(rows, rng), rng)
    return reference, batch


def measure(rows: int, repeats: int) -> dict:
    reference, batch = frames(rows)
    started = time.perf_counter()
    import poisonguard

    first = poisonguard.scan(batch, label="risk_grade", reference=reference, dataset="loans")
    first_seconds = time.perf_counter() - started
    warm = {"with reference": [], "without reference": [], "README sample, with reference": []}
    held = {}
    sample = (SAMPLES / "loans_batch.csv", SAMPLES / "loans_reference.csv")
    for _ in range(repeats):
        for setting, data, given in (("with reference", batch, reference), ("without reference", batch, None),
                                     ("README sample, with reference", *sample)):
            started = time.perf_counter()
            result = poisonguard.scan(data, label="risk_grade", reference=given, dataset="loans")
            warm[setting].append(time.perf_counter() - started)
            held[setting] = len(result.quarantined)
    return {"rows": len(batch), "first": first_seconds, "first_held": len(first.quarantined), "warm": warm,
            "held": held, "repeats": repeats}


def table(measured: dict) -> str:
    rows = measured["rows"]
    warm_ref = statistics.median(measured["warm"]["with reference"])
    lines = ["| call | seconds | rows / s | quarantined |", "|---|---:|---:|---:|",
             f"| first scan, with reference (imports included) | {measured['first']:.2f} | "
             f"{rows / measured['first']:,.0f} | {measured['first_held']:,} |",
             f"| imports and first-use set-up (first minus warm) | {measured['first'] - warm_ref:.2f} | | |"]
    for setting, seconds in measured["warm"].items():
        median = statistics.median(seconds)
        scanned = 2_000 if setting.startswith("README") else rows
        lines.append(f"| warm scan, {setting} | {median:.2f} (worst {max(seconds):.2f}) | {scanned / median:,.0f} | "
                     f"{measured['held'][setting]:,} |")
    return ("\n".join(lines) + f"\n\n{rows:,} batch rows, 3,000 reference rows; warm figures are medians of "
            f"{measured['repeats']} scans in one process, on {os.cpu_count()} cores.\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--write", action="store_true", help="write the table into benchmarks/RESULTS.md")
    args = parser.parse_args(argv)
    body = table(measure(args.rows, args.repeats))
    print(body)
    if args.write:
        from benchmarks.results import write_section

        write_section("api_latency", "poisonguard.scan on a DataFrame: first call and warm calls",
                      __doc__.split("\n\n", 2)[2].strip() + "\n\n" + body)


if __name__ == "__main__":
    main()
