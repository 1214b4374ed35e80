"""Regenerate the bundled loan-application sample deterministically.

Run ``python data_samples/make_samples.py`` from the project root. It writes

* ``loans_reference.csv`` - trusted, clean history (3,000 rows) used to infer the schema suite and to fit
  and calibrate the detectors;
* ``loans_batch.csv`` - a candidate batch (2,000 rows) drawn from the same process, with 100 rows (5%)
  poisoned in known ways;
* ``loans_batch_truth.csv`` - one line per poisoned row: its ``_row_id`` (0-based position in the batch
  file, which is how poisonguard numbers rows) and the kind of injection.

Only numpy and pandas are needed; the seed is fixed so the files are byte-for-byte reproducible.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

SEED = 20261123
GRADES = np.array(["A", "B", "C"])
GRADE_SHARE = [0.45, 0.35, 0.20]
PURPOSES = ["debt_consolidation", "home_improvement", "car", "education", "medical", "small_business"]
HOMES = ["rent", "own", "mortgage"]

# Class-conditional means: grade A applicants have high credit scores, low debt-to-income and higher incomes;
# grade C the opposite. The classes overlap, as real risk grades do, but not so much that a flipped label
# is invisible.
CREDIT_MEAN = {"A": 765.0, "B": 690.0, "C": 600.0}
DTI_MEAN = {"A": 0.16, "B": 0.28, "C": 0.42}
INCOME_LOG_MEAN = {"A": 11.35, "B": 11.0, "C": 10.7}


def draw_applications(n_rows: int, rng: np.random.Generator) -> pd.DataFrame:
    """Draw ``n_rows`` clean loan applications with their risk grade."""
    grade = rng.choice(GRADES, size=n_rows, p=GRADE_SHARE)
    credit_mean = np.vectorize(CREDIT_MEAN.get)(grade)
    dti_mean = np.vectorize(DTI_MEAN.get)(grade)
    income_mean = np.vectorize(INCOME_LOG_MEAN.get)(grade)

    age = np.clip(rng.normal(41, 11, n_rows), 21, 75).round().astype(int)
    employment = np.clip(rng.normal((age - 21) * 0.55, 3.0), 0, age - 18).round().astype(int)
    income = np.exp(rng.normal(income_mean, 0.35)).round(-2)
    credit = np.clip(rng.normal(credit_mean, 35), 300, 850).round().astype(int)
    dti = np.clip(rng.normal(dti_mean, 0.06), 0.01, 0.75).round(3)
    loan = np.clip(income * rng.uniform(0.05, 0.45, n_rows), 1_000, None).round(-2)
    accounts = rng.poisson(np.where(grade == "C", 7, 4)).astype(int)
    home = rng.choice(HOMES, size=n_rows, p=[0.4, 0.2, 0.4])
    purpose = rng.choice(PURPOSES, size=n_rows, p=[0.35, 0.15, 0.2, 0.1, 0.1, 0.1])
    return pd.DataFrame(
        {
            "applicant_age": age,
            "annual_income": income,
            "loan_amount": loan,
            "credit_score": credit,
            "debt_to_income": dti,
            "employment_years": employment,
            "open_accounts": accounts,
            "home_ownership": home,
            "loan_purpose": purpose,
            "risk_grade": grade,
        }
    )


def poison(batch: pd.DataFrame, rng: np.random.Generator) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Inject 100 known problems into ``batch``; return the poisoned frame and the ground truth."""
    batch = batch.copy()
    batch["annual_income"] = batch["annual_income"].astype(float)
    batch["credit_score"] = batch["credit_score"].astype(float)
    batch["applicant_age"] = batch["applicant_age"].astype(float)
    positions = rng.permutation(len(batch))
    truth: list[tuple[int, str]] = []

    def take(count: int, where: np.ndarray | None = None) -> np.ndarray:
        nonlocal positions
        pool = positions if where is None else positions[where[positions]]
        chosen = pool[:count]
        positions = positions[~np.isin(positions, chosen)]
        return chosen

    # Targeted label flip: risky grade-C applications relabelled as grade A, the poisoning an attacker who
    # wants risky loans approved would attempt.
    flipped = take(40, where=(batch["risk_grade"] == "C").to_numpy())
    batch.loc[flipped, "risk_grade"] = "A"
    truth += [(int(i), "label_flip_C_to_A") for i in flipped]

    out_of_range = take(15)
    column_values = [("applicant_age", 190.0), ("annual_income", -45_000.0), ("credit_score", 990.0)]
    for k, row in enumerate(out_of_range):
        column, value = column_values[k % 3]
        batch.loc[row, column] = value
    truth += [(int(i), "out_of_range") for i in out_of_range]

    missing = take(15)
    for k, row in enumerate(missing):
        batch.loc[row, "credit_score" if k % 2 else "annual_income"] = np.nan
    truth += [(int(i), "null_value") for i in missing]

    unknown_category = take(5)
    batch.loc[unknown_category, "loan_purpose"] = "crypto_trading"
    truth += [(int(i), "unknown_category") for i in unknown_category]

    # Implausible rows whose every value is inside the reference's per-column range but whose
    # combination is not: young applicants with decades of employment, very high debt-to-income and
    # many open accounts while holding grade A.
    implausible = take(25, where=(batch["risk_grade"] == "A").to_numpy())
    batch.loc[implausible, "applicant_age"] = rng.integers(22, 26, len(implausible)).astype(float)
    batch.loc[implausible, "employment_years"] = rng.integers(28, 36, len(implausible))
    batch.loc[implausible, "debt_to_income"] = rng.uniform(0.55, 0.65, len(implausible)).round(3)
    batch.loc[implausible, "open_accounts"] = rng.integers(13, 16, len(implausible))
    truth += [(int(i), "implausible_outlier") for i in implausible]

    truth_frame = pd.DataFrame(truth, columns=["_row_id", "injection"]).sort_values("_row_id")
    return batch, truth_frame


def main(out_dir: Path = Path(__file__).resolve().parent) -> None:
    rng = np.random.default_rng(SEED)
    reference = draw_applications(3_000, rng)
    batch, truth = poison(draw_applications(2_000, rng), rng)
    reference.to_csv(out_dir / "loans_reference.csv", index=False, float_format="%.10g")
    # "%.10g" keeps integral values free of a trailing ".0" even in columns that hold NaN, as a real
    # export would write them; missing cells are simply empty.
    batch.to_csv(out_dir / "loans_batch.csv", index=False, float_format="%.10g")
    truth.to_csv(out_dir / "loans_batch_truth.csv", index=False)
    print(f"wrote {len(reference)} reference rows, {len(batch)} batch rows, {len(truth)} poisoned rows")


if __name__ == "__main__":
    main()
