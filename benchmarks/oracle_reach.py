"""Whether a peer's oracle figure on the held-out suite is within reach of a threshold set on trusted rows.

    python -m benchmarks.oracle_reach [--seeds 3] [--cases SUBSTRING,...]

The held-out tables set poisonguard's recall beside a peer's *oracle* recall: the share of poison above the
score that flags 1% of the batch's clean rows. Where an attack chooses which rows to poison by how hard
they are (boundary label noise relabels the rows a model is least sure of), the batch's remaining clean
rows are easier than clean rows in general, so that oracle threshold sits lower than any threshold set
at 1% on trusted rows: no calibrated tool could use it without quarantining more than 1% of clean data
drawn like the reference.

Per case (label-noise attacks by default) and seed, ``label_model`` (the reference-trained label model)
is fitted on half of the reference and scores the other half and the batch. Printed, means over seeds:
the share of the held-out reference rows above the oracle threshold (1% where the batch's clean rows
look like the reference), the poison above the oracle threshold, and the poison above the held-out
reference's own 99th percentile (what a threshold set at 1% on trusted rows reaches).
Diagnosis only: nothing here chooses a parameter.
"""

from __future__ import annotations

import argparse

import numpy as np

from benchmarks.attacks import LABEL
from benchmarks.heldout import cases_named
from benchmarks.heldout_suite import CASES, Case, make_case

LABEL_NOISE = ("boundary label noise", "subgroup label shift", "subpopulation flip")


def reach(case: Case, seed: int) -> tuple[float, float, float]:
    """(held-out reference rows above the oracle threshold, poison above it, poison above the held-out
    reference's 99th percentile) of ``label_model`` on ``case`` for ``seed``."""
    from poisonguard.detectors import make_detector
    from poisonguard.featurize.features import FeatureEncoder, infer_kinds

    data = make_case(case, seed)
    encoder = FeatureEncoder(infer_kinds(data.reference, LABEL), LABEL).fit(data.reference)
    trusted, trusted_labels = encoder.transform(data.reference), data.reference[LABEL].to_numpy(dtype=object)
    batch, labels = encoder.transform(data.batch), data.batch[LABEL].to_numpy(dtype=object)
    fit = np.arange(len(trusted)) % 2 == 0
    detector = make_detector("label_model", seed=0).fit(trusted[fit], trusted_labels[fit])
    held_out = detector.decision_function(trusted[~fit], trusted_labels[~fit])
    scores = detector.decision_function(batch, labels)
    oracle = np.quantile(scores[~data.mask], 0.99)
    poison = scores[data.mask]
    return (float(np.mean(held_out > oracle)), float(np.mean(poison > oracle)),
            float(np.mean(poison > np.quantile(held_out, 0.99))))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--cases", help="only the cases whose name contains one of these (comma-separated)")
    args = parser.parse_args(argv)
    cases = (cases_named(args.cases.split(",")) if args.cases
             else [case for case in CASES if case.attack in LABEL_NOISE])
    print("| case | reference rows above the oracle threshold (worst) | poison above it | "
          "poison above the reference's 99th percentile |")
    print("|---|---:|---:|---:|")
    for case in cases:
        runs = np.array([reach(case, seed) for seed in range(args.seeds)])
        print(f"| {case.name} | {runs[:, 0].mean():.1%} ({runs[:, 0].max():.1%}) | {runs[:, 1].mean():.2f} | "
              f"{runs[:, 2].mean():.2f} |", flush=True)


if __name__ == "__main__":
    main()
