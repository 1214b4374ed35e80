"""Detection on the held-out attack suite (:mod:`benchmarks.heldout_suite`), by the default command.

    python -m benchmarks.heldout [--seeds 5] [--cases SUBSTRING,...] [--jobs 2] [--no-peers] [--runs-csv FILE] [--write]
    python -m benchmarks.heldout --from-csv a.csv,b.csv [--write]   # the table of runs saved before
    python -m benchmarks.heldout --no-peers --peers-from a.csv,b.csv [--write]   # peers as saved, poisonguard now
    python -m benchmarks.heldout --from-csv new.csv --peers-from a.csv,b.csv --before old.csv   # what moved

Every case and seed is scanned twice in this process, as ``poisonguard scan`` would scan it with its
default settings: with the case's trusted reference, and without one. Nothing is chosen per case: one preset,
poisonguard's own threshold. Reported per case over the seeds: recall (share of poisoned rows quarantined)
and false quarantine (share of clean rows quarantined, schema rules included), mean and worst; beside them
the peers of :mod:`benchmarks.fair_peers`, each by its oracle figure and its own decision.

This suite judges; it never tunes. See the suite's docstring.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import numpy as np
import pandas as pd

from benchmarks.attacks import LABEL
from benchmarks.heldout_suite import CASES, Case, make_case
from benchmarks.results import add_run_arguments, run_tasks, runs_of
from benchmarks.scanning import process_validator, scan_rows

POISONGUARD = "poisonguard, default command"
HELDOUT_NOTES = (
    "Suite: `benchmarks/heldout_suite.py`, frozen before any tuning. `setting`: `reference` rows scan with the "
    "case's trusted reference, `batch` rows without one (and compare with batch-only peers). poisonguard is its "
    "default command at its own threshold (1% budget), with schema rules; a peer's oracle recall is at the "
    "threshold that flags 1% of clean rows, which no user can know; its own decision is its flags at its "
    "documented setting (`benchmarks/fair_peers.py`). Means over seeds; poisonguard's worst seed in brackets."
)


def _one_run(case: Case, seed: int, with_peers: bool) -> list[dict]:
    """The case scanned with and without its reference, and every peer's figures, as records."""
    from poisonguard.config import ScanConfig

    validator = process_validator()
    data = make_case(case, seed)
    about = {"case": case.name, "dataset": case.dataset, "attack": case.attack, "rate": case.rate,
             "batch_rows": case.batch_rows, "seed": seed}
    records = []
    for setting, reference in (("reference", data.reference), ("batch", None)):
        started = time.perf_counter()
        scanned = scan_rows(data.batch, reference, LABEL, ScanConfig(label_col=LABEL, seed=seed), validator)
        records.append({
            **about, "setting": setting, "tool": POISONGUARD,
            "reference_rows": case.reference_rows if reference is not None else 0,
            "own_recall": float(scanned.quarantined[data.mask].mean()),
            "own_false_quarantine": float(scanned.quarantined[~data.mask].mean()),
            "oracle_recall": float("nan"), "guarantee": scanned.guarantee, "seconds": time.perf_counter() - started,
        })
    if with_peers:
        from benchmarks.fair_peers import judged, run_fair_peers

        outputs = run_fair_peers(data.reference, data.batch, LABEL, float(data.mask.mean()), seed)
        for (setting, tool), (flags, score) in outputs.items():
            records.append({**about, "setting": setting, "tool": tool,
                            "reference_rows": case.reference_rows if setting == "reference" else 0,
                            **judged(data.mask, flags, score), "guarantee": "", "seconds": float("nan")})
    return records


def cases_named(parts: list[str]) -> list[Case]:
    """The suite's cases whose name contains one of ``parts`` (``--cases``)."""
    return [case for case in CASES if any(part in case.name for part in parts)]


def run(cases: list[Case], seeds: int, jobs: int = 1, with_peers: bool = True) -> pd.DataFrame:
    tasks = [(case, seed, with_peers) for case in cases for seed in range(seeds)]
    return pd.DataFrame.from_records([record for records in run_tasks(_one_run, tasks, jobs) for record in records])


def table(results: pd.DataFrame) -> str:
    """Per case and setting: poisonguard at its own threshold beside the best peer's oracle figure and the
    best peer's own decision that kept false quarantine within 2%."""
    lines = [
        "| dataset | attack | rate | batch rows | reference rows | seeds | poisonguard recall (worst) | "
        "poisonguard false quarantine (worst) | best peer oracle recall at 1% FP | best peer own decision: "
        "recall, false quarantine |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    keys = ["dataset", "attack", "rate", "batch_rows", "setting"]
    for (dataset, attack, rate, batch_rows, setting), group in results.groupby(keys, sort=False):
        ours = group[group["tool"] == POISONGUARD]
        peers = group[group["tool"] != POISONGUARD].groupby("tool")[
            ["oracle_recall", "own_recall", "own_false_quarantine"]].mean()
        oracle = _best(peers["oracle_recall"].dropna()) if len(peers) else "-"
        within = peers[peers["own_false_quarantine"] <= 0.02]
        own = "-"
        if len(within):
            tool = within["own_recall"].idxmax()
            own = f"{within.loc[tool, 'own_recall']:.2f}, {within.loc[tool, 'own_false_quarantine']:.2%} ({tool})"
        lines.append(
            f"| {dataset} | {attack} | {rate:.0%} | {batch_rows:,} | {int(ours['reference_rows'].max()):,} | "
            f"{len(ours)} | {ours['own_recall'].mean():.2f} ({ours['own_recall'].min():.2f}) | "
            f"{ours['own_false_quarantine'].mean():.2%} ({ours['own_false_quarantine'].max():.2%}) | {oracle} | {own} |"
        )
    return "\n".join(lines)


def peer_table(results: pd.DataFrame) -> str:
    """Every tool on every case and setting, means over the seeds: oracle recall and own decision."""
    lines = ["| case | setting | tool | oracle recall at 1% FP | own recall | own false quarantine |",
             "|---|---|---|---:|---:|---:|"]
    figures = results.groupby(["case", "setting", "tool"], sort=False)[
        ["oracle_recall", "own_recall", "own_false_quarantine"]].mean()
    for (case, setting, tool), row in figures.iterrows():
        oracle = "-" if np.isnan(row["oracle_recall"]) else f"{row['oracle_recall']:.2f}"
        lines.append(f"| {case} | {setting} | {tool} | {oracle} | {row['own_recall']:.2f} | "
                     f"{row['own_false_quarantine']:.2%} |")
    return "\n".join(lines)


BAR_REFERENCE_ROWS = 2_000  # the bar applies with a reference of at least this many rows
BAR_RECALL = 0.9  # ... where some tool's oracle recall at 1% false positives reaches BAR_ORACLE
BAR_ORACLE = 0.5
BAR_FALSE_QUARANTINE = {"reference": 0.01, "batch": 0.02}


def bar_table(results: pd.DataFrame) -> str:
    """Each case and setting against the bar issue 20 sets, from means over the seeds: with a reference of at
    least ``BAR_REFERENCE_ROWS`` rows, recall >= ``BAR_RECALL`` where any tool's oracle recall reaches
    ``BAR_ORACLE`` and >= the best peer's oracle recall everywhere, false quarantine <= 1%; without one,
    recall >= the best batch-only peer's oracle recall, false quarantine <= 2%. A case whose reference is
    smaller is listed but not counted. Ends with the count of cases that meet each part."""
    lines = ["| case | setting | poisonguard recall | recall needed | met | false quarantine (worst) | limit | met |",
             "|---|---|---:|---:|---|---:|---:|---|"]
    counted = {"reference": [0, 0, 0], "batch": [0, 0, 0]}  # cases, recall met, false quarantine met
    for (case, setting), group in results.groupby(["case", "setting"], sort=False):
        ours = group[group["tool"] == POISONGUARD]
        if not len(ours):
            continue
        oracle = group[group["tool"] != POISONGUARD].groupby("tool")["oracle_recall"].mean().dropna()
        best = float(oracle.max()) if len(oracle) else 0.0
        needed = max(best, BAR_RECALL if best >= BAR_ORACLE else 0.0) if setting == "reference" else best
        recall, fq, worst = (ours["own_recall"].mean(), ours["own_false_quarantine"].mean(),
                             ours["own_false_quarantine"].max())
        limit = BAR_FALSE_QUARANTINE[setting]
        counts = setting == "batch" or ours["reference_rows"].max() >= BAR_REFERENCE_ROWS
        recall_met, fq_met = recall >= needed, fq <= limit
        if counts:
            tally = counted[setting]
            tally[0] += 1
            tally[1] += recall_met
            tally[2] += fq_met
        mark = (lambda met: "yes" if met else "**no**") if counts else (lambda met: "(not counted)")
        lines.append(f"| {case} | {setting} | {recall:.2f} | {needed:.2f} | {mark(recall_met)} | "
                     f"{fq:.2%} ({worst:.2%}) | {limit:.0%} | {mark(fq_met)} |")
    titles = {"reference": f"with a reference of at least {BAR_REFERENCE_ROWS:,} rows", "batch": "without a reference"}
    summary = [f"{titles[setting]}: recall met on {met_recall} of {cases} cases, "
               f"false quarantine on {met_fq} of {cases}"
               for setting, (cases, met_recall, met_fq) in counted.items() if cases]
    return "\n".join(lines) + "\n\n" + "; ".join(summary) + "."


def moved_table(results: pd.DataFrame, before: pd.DataFrame, at_least: float = 0.05) -> str:
    """poisonguard's mean recall and false quarantine per case and setting, ``before`` -> ``results``, for the
    cases where recall moved by ``at_least`` or false quarantine by a tenth of that."""
    def means(frame: pd.DataFrame) -> pd.DataFrame:
        ours = frame[frame["tool"] == POISONGUARD]
        return ours.groupby(["case", "setting"], sort=False)[["own_recall", "own_false_quarantine"]].mean()

    now, then = means(results), means(before)
    joined = now.join(then, rsuffix="_before", how="inner")
    lines = ["| case | setting | recall before -> now | false quarantine before -> now |", "|---|---|---|---|"]
    for (case, setting), row in joined.iterrows():
        if (abs(row["own_recall"] - row["own_recall_before"]) < at_least
                and abs(row["own_false_quarantine"] - row["own_false_quarantine_before"]) < at_least / 10):
            continue
        lines.append(f"| {case} | {setting} | {row['own_recall_before']:.2f} -> {row['own_recall']:.2f} | "
                     f"{row['own_false_quarantine_before']:.2%} -> {row['own_false_quarantine']:.2%} |")
    return "\n".join(lines)


def _best(oracle: pd.Series) -> str:
    if not len(oracle):
        return "-"
    return f"{oracle.max():.2f} ({oracle.idxmax()})"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--cases", default="", help="only the cases whose name contains one of these (comma-separated)")
    add_run_arguments(parser, "cases scanned")
    parser.add_argument("--no-peers", action="store_true", help="scan with poisonguard alone")
    parser.add_argument("--peers-from", default="",
                        help="the peers' records from these saved runs (comma-separated CSVs): peers do not depend "
                             "on poisonguard's code, so a change to it is measured without rerunning them")
    parser.add_argument("--before", default="",
                        help="a saved run (CSV) of an earlier commit: also print what moved since")
    parser.add_argument("--write", action="store_true", help="write the tables into benchmarks/RESULTS.md")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    started = time.perf_counter()
    cases = cases_named(args.cases.split(","))
    results = runs_of(args, lambda: run(cases, args.seeds, args.jobs, not args.no_peers))
    if args.peers_from:
        saved = pd.concat([pd.read_csv(path) for path in args.peers_from.split(",")], ignore_index=True)
        scanned = set(zip(results["case"], results["seed"]))
        wanted = np.array([key in scanned for key in zip(saved["case"], saved["seed"])], dtype=bool)
        saved = saved[(saved["tool"] != POISONGUARD).to_numpy() & wanted]
        results = pd.concat([results[results["tool"] == POISONGUARD], saved], ignore_index=True)
    ours = results[results["tool"] == POISONGUARD]
    seconds = statistics.median(ours["seconds"]) if len(ours) else 0.0
    body = (HELDOUT_NOTES + "\n\n" + table(results)
            + f"\n\n{len(ours)} scans, median {seconds:.1f} s a scan"
            + ("." if args.from_csv else f", {time.perf_counter() - started:.0f} s in all"
               + (", peers included." if not args.no_peers else ".")))
    print(body)
    peers = peer_table(results) if (results["tool"] != POISONGUARD).any() else ""
    bar = bar_table(results) if peers else ""
    if peers:
        print("\n" + peers + "\n\n" + bar)
    if args.before:
        print("\n" + moved_table(results, pd.read_csv(args.before)))
    if args.write:
        from benchmarks.results import write_section

        write_section("heldout", "Held-out attack suite: the default command on attacks it was not built around",
                      body)
        if peers:
            write_section("heldout", "Held-out attack suite: every peer, oracle and own decision", peers,
                          section="heldout-peers")
            write_section("heldout", "Held-out attack suite against the bar of issue 20", bar, section="heldout-bar")


if __name__ == "__main__":
    main()
