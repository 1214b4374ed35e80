"""Detection quality of poisonguard's detectors on poisoned scikit-learn datasets.

    python -m benchmarks.detection [--rates 0.05,0.1] [--detectors ...] [--combined ...] [--write]
    python -m benchmarks.detection --seeds 10 [--write]

For each attack x poison rate, the dataset is split in two halves: a trusted reference and a batch that
is poisoned. Every detector is run alone and the combined set together, with the reference (conformal
calibration at the 1% false-quarantine budget) and without it (robust per-batch rules), through the
same ``score_rows`` the scan uses. Reported: precision, recall, F1 and false quarantine of the
calibrated flags, AUROC of the score, recall at 1% false positives with an oracle threshold (what a peer
tool is credited with), and seconds. The peers of :mod:`benchmarks.peers` (PyOD; cleanlab and IBM ART with
the ``bench`` extra) run on the same poisoned batches. Prints a markdown table; ``--write`` also writes
it, with the command and versions, into ``benchmarks/RESULTS.md``.

``--seeds N`` instead reruns only the combined set with the reference, for seeds ``0 .. N-1`` (each seed
draws another split, poison and calibration), and reports the mean, median and worst of recall and false
quarantine: how much a single run's figures can move.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections.abc import Callable

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from benchmarks import attacks, peers
from benchmarks.attacks import LABEL

DEFAULT_COMBINED = ("auto",)  # the default command
DETECTION_NOTES = (
    "Each dataset is split in halves: a trusted reference and a batch that is poisoned. poisonguard's rows "
    "run through the scan's own `score_rows`, with the reference (`reference: yes`, conformal thresholds at "
    "a 1% false-quarantine budget) and without it (robust per-batch rules). Peer rows (`peer: ...`, see "
    "`benchmarks/peers.py`) see only the poisoned batch, with their own default flags. `recall_at_1pct_fp` "
    "uses an oracle threshold at the 99th percentile of the clean rows' scores, which favours every tool; "
    "`false_quarantine` is the share of clean rows flagged at the tool's own threshold."
)


def scenarios() -> list[tuple[str, str, Callable[[pd.DataFrame, float, int], attacks.Poisoned]]]:
    """(dataset, attack name, attack) rows of the quality table, plus clean-label and duplicate replays."""
    trigger = attacks.digits_corner_trigger()
    return [
        ("digits", "BadNets 2x2 corner -> 0", lambda f, r, s: attacks.backdoor(f, r, trigger, "0", s)),
        ("digits", "random label flips", lambda f, r, s: attacks.random_flips(f, r, s)),
        ("breast_cancer", "targeted flips 1 -> 0", lambda f, r, s: attacks.targeted_flips(f, r, "1", "0", s)),
        ("wine", "injected outliers", lambda f, r, s: attacks.outliers(f, r, s)),
        ("digits", "clean-label trigger on 0", lambda f, r, s: attacks.backdoor(f, r, trigger, "0", s, relabel=False)),
        ("breast_cancer", "duplicate replay, flipped", lambda f, r, s: attacks.duplicate_replay(f, r, s)),
        ("tickets", "word 'asap' in text -> billing",
         lambda f, r, s: attacks.text_trigger(f, r, "message", "asap", "billing", s)),
        ("shop", "channel=phone & plan=pro -> churn",
         lambda f, r, s: attacks.backdoor(f, r, {"channel": "phone", "plan": "pro"}, "churn", s)),
        ("patches", "noisy line -> china_top", lambda f, r, s: attacks.noisy_line_trigger(f, r, "china_top", s)),
        # Ten classes of 500 reference rows, fewer than a class needs to be calibrated on its own held-out rows
        ("patches10", "noisy line -> china_0", lambda f, r, s: attacks.noisy_line_trigger(f, r, "china_0", s)),
        ("synthetic", "bands on f3, f7 -> 0",
         lambda f, r, s: attacks.band_trigger(f, r, {"f3": (0.8, 1.1), "f7": (-1.1, -0.8)}, "0", s)),
    ]


def evaluate(batch: pd.DataFrame, mask: np.ndarray, reference: pd.DataFrame | None, detectors: tuple[str, ...],
             seed: int) -> dict:
    from poisonguard import ROW_ID
    from poisonguard.config import ScanConfig
    from poisonguard.featurize.features import infer_kinds
    from poisonguard.score.rows import score_rows

    batch = batch.assign(**{ROW_ID: np.arange(len(batch))})
    kinds = infer_kinds(batch, LABEL)
    config = ScanConfig(label_col=LABEL, detectors=detectors, seed=seed)
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scores = score_rows(batch, reference, kinds, LABEL, config)
    seconds = time.perf_counter() - started
    if not scores.flags:
        return {"seconds": seconds, "calibration": scores.calibration}
    flags = np.logical_or.reduce(list(scores.flags.values()))
    if scores.p_values:
        combined = -np.log10(np.minimum.reduce(list(scores.p_values.values())))
    elif len(scores.evidence) == 1:
        combined = next(iter(scores.evidence.values()))
    else:
        combined = None  # per-batch evidence of several detectors has no common scale
    return {"seconds": seconds, "calibration": scores.calibration, **metrics(mask, flags, combined)}


def metrics(mask: np.ndarray, flags: np.ndarray, score: np.ndarray | None) -> dict:
    true_positive = int((flags & mask).sum())
    precision = true_positive / flags.sum() if flags.sum() else float("nan")
    recall = true_positive / mask.sum()
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    result = {"precision": precision, "recall": recall, "f1": f1, "false_quarantine": float(flags[~mask].mean())}
    if score is not None and np.isfinite(score).all():
        result["auroc"] = roc_auc_score(mask, score)
        cut = np.quantile(score[~mask], 0.99)
        result["recall_at_1pct_fp"] = float((score[mask] > cut).mean())
    return result


def halves(dataset: str, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The dataset shuffled by ``seed`` and cut in two: (trusted reference, batch to poison)."""
    data = attacks.load_dataset(dataset, seed)
    half = len(data) // 2
    return data.iloc[:half].reset_index(drop=True), data.iloc[half:].reset_index(drop=True)


def run(rates: list[float], detectors: list[str], combined: tuple[str, ...], seed: int,
        with_peers: bool = True) -> pd.DataFrame:
    rows = []
    for dataset, attack_name, attack in scenarios():
        reference, clean_batch = halves(dataset, seed)
        for rate in rates:
            poisoned = attack(clean_batch, rate, seed)
            runs = [(name, (name,)) for name in detectors] + [("combined: " + ",".join(combined), combined)]
            for label, names in runs:
                for with_reference in (True, False):
                    result = evaluate(poisoned.frame, poisoned.mask, reference if with_reference else None, names,
                                      seed)
                    rows.append({"dataset": dataset, "attack": attack_name, "rate": rate, "detector": label,
                                 "reference": "yes" if with_reference else "no", **result})
                    _progress(rows[-1])
            if with_peers:
                X = poisoned.frame.drop(columns=[LABEL]).to_numpy(dtype="float64")
                for name, (flags, score, seconds) in peers.run_peers(X, poisoned.frame[LABEL].to_numpy(), seed).items():
                    rows.append({"dataset": dataset, "attack": attack_name, "rate": rate, "detector": f"peer: {name}",
                                 "reference": "no", "seconds": seconds, **metrics(poisoned.mask, flags, score)})
                    _progress(rows[-1])
    return pd.DataFrame(rows)


STABILITY_NOTES = (
    "The combined set ({detectors}) {reference}, rerun for every seed: each seed shuffles the dataset "
    "(another reference half, another batch half), draws another poison and another calibration. "
    "`fq > 1%` counts the seeds whose false quarantine exceeded the 1% budget; `calibration` is the "
    "calibration rows and the guarantee of the last seed (the same for every seed), or the per-batch rule."
)


def stability(rates: list[float], combined: tuple[str, ...], seeds: int, datasets: set[str] | None = None,
              with_reference: bool = True) -> pd.DataFrame:
    """Recall and false quarantine of the combined set, with the reference or without it, over seeds
    ``0 .. seeds-1`` (on every scenario, or those of ``datasets``)."""
    rows = []
    for dataset, attack_name, attack in scenarios():
        if datasets is not None and dataset not in datasets:
            continue
        for rate in rates:
            runs = []
            for seed in range(seeds):
                reference, clean_batch = halves(dataset, seed)
                poisoned = attack(clean_batch, rate, seed)
                given = reference if with_reference else None
                runs.append(evaluate(poisoned.frame, poisoned.mask, given, combined, seed))
            calibration = runs[-1]["calibration"]
            described = (f"{calibration['holdout_rows']}, {calibration['guarantee']}" if with_reference
                         else calibration["rule"])
            recall = np.array([r["recall"] for r in runs])
            false_quarantine = np.array([r["false_quarantine"] for r in runs])
            rows.append({
                "dataset": dataset, "attack": attack_name, "rate": rate, "seeds": seeds,
                "recall mean": recall.mean(), "recall median": np.median(recall), "recall worst": recall.min(),
                "fq mean": false_quarantine.mean(), "fq median": np.median(false_quarantine),
                "fq worst": false_quarantine.max(), "fq > 1%": int((false_quarantine > 0.01).sum()),
                "calibration": described,
            })
            print(rows[-1], file=sys.stderr)
    return pd.DataFrame(rows)


def stability_markdown(table: pd.DataFrame) -> str:
    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    for record in table.to_dict("records"):
        cells = [f"{v:.2%}" if k.startswith("fq") and isinstance(v, float) else f"{v:.2f}" if isinstance(v, float)
                 else str(v) for k, v in record.items()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _progress(row: dict) -> None:
    print(f"{row['dataset']:13s} {row['attack']:28s} {row['rate']:.2f} {row['detector']:40s} "
          f"ref={row['reference']:3s} recall {row.get('recall', float('nan')):.2f} "
          f"fq {row.get('false_quarantine', float('nan')):.3f}", file=sys.stderr)


def to_markdown(table: pd.DataFrame) -> str:
    columns = ["dataset", "attack", "rate", "detector", "reference", "precision", "recall", "f1",
               "false_quarantine", "auroc", "recall_at_1pct_fp", "seconds"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for record in table.reindex(columns=columns).to_dict("records"):
        cells = []
        for column in columns:
            value = record[column]
            if isinstance(value, float):
                value = "" if np.isnan(value) else f"{value:.2%}" if column == "false_quarantine" else (
                    f"{value:.1f}" if column == "seconds" else f"{value:.2f}")
            cells.append(str(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    from poisonguard.detectors import REGISTRY

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="0.05,0.1")
    parser.add_argument("--detectors", default=",".join(REGISTRY), help="detectors to run alone")
    parser.add_argument("--combined", default=",".join(DEFAULT_COMBINED), help="the combined set")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--write", action="store_true", help="write the table into benchmarks/RESULTS.md")
    parser.add_argument("--no-peers", action="store_true", help="skip PyOD, cleanlab and ART run alone")
    parser.add_argument("--seeds", type=int, default=0,
                        help="rerun only the combined set for seeds 0..N-1 (stability)")
    parser.add_argument("--datasets", default="", help="with --seeds: only these datasets (comma-separated)")
    parser.add_argument("--no-reference", action="store_true",
                        help="with --seeds: run the combined set without the reference")
    parser.add_argument("--runs-csv", default="", help="with --seeds: also save the table's rows to this CSV")
    parser.add_argument("--from-csv", default="",
                        help="with --seeds: build the table from rows saved by --runs-csv, running nothing")
    args = parser.parse_args()
    if args.seeds:
        from benchmarks.results import runs_of

        combined = tuple(args.combined.split(","))
        datasets = set(args.datasets.split(",")) if args.datasets else None
        markdown = stability_markdown(runs_of(args, lambda: stability(
            [float(r) for r in args.rates.split(",")], combined, args.seeds, datasets,
            with_reference=not args.no_reference)))
        print(markdown)
        if args.write:
            from benchmarks.results import write_section

            reference = "without a reference" if args.no_reference else "with the reference"
            notes = STABILITY_NOTES.format(detectors=", ".join(combined), reference=reference)
            section = "detection-stability" + ("-no-reference" if args.no_reference else "")
            write_section("detection", f"Detection: how much one run's figures move across seeds, {reference}",
                          notes + "\n\n" + markdown, section=section)
        return
    table = run([float(r) for r in args.rates.split(",")], [d for d in args.detectors.split(",") if d],
                tuple(args.combined.split(",")), args.seed, with_peers=not args.no_peers)
    markdown = to_markdown(table)
    print(markdown)
    if args.write:
        from benchmarks.results import write_section

        missing = peers.available() if not args.no_peers else {"all peers": "--no-peers"}
        notes = "".join(f"\n\nNot run: {name}, {why}." for name, why in missing.items())
        write_section("detection", "Detection: poisonguard's detectors and the peers on poisoned data",
                      DETECTION_NOTES + notes + "\n\n" + markdown)


if __name__ == "__main__":
    main()
