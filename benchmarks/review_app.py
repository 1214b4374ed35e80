"""How fast the review app answers on a large quarantine, and one bulk release of most of it.

    python -m benchmarks.review_app [--rows 100000] [--repeats 5] [--write]

Scans ``--rows`` loan applications (the bundled sample's generator) against a 3,000-row reference, with
``applicant_age`` written in months in 90% of the batch's rows (an exporter's unit change), so that most
rows are quarantined for that one range rule alone. The decision timed is a release, the heavier one (it
writes the released rows' Parquet file). Then, in this process, with the app's
own request handling (Starlette's test client: no network between the two, so the figures are the
server's work):

* the batch page, unfiltered (first page), filtered to the rows whose only reason is the range rule,
  sorted by a column, and its last page;
* one decision releasing every row matching that filter, and the batch page after it.

Reported: medians of ``--repeats`` requests (a decision is made once), the rows each matched, and the
released file's row count. Wall-clock figures of a shared machine: compare within one run.
"""

from __future__ import annotations

import argparse
import re
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from benchmarks.api_latency import frames


def measure(rows: int, repeats: int) -> list[dict]:
    from starlette.testclient import TestClient

    import poisonguard
    from poisonguard.review.app import create_app, login_tokens
    from poisonguard.review.batches import released_row_ids

    reference, batch = frames(rows)
    # An exporter's unit change: most ages in months, far outside the reference's range.
    in_months = np.random.default_rng(1).random(len(batch)) < 0.9
    batch.loc[in_months, "applicant_age"] = batch.loc[in_months, "applicant_age"] * 12
    work = Path(tempfile.mkdtemp(prefix="review-bench-"))
    started = time.perf_counter()
    result = poisonguard.scan(batch, label="risk_grade", reference=reference, dataset="bench")
    result.save(work)
    scanned = time.perf_counter() - started
    tokens = login_tokens(None, [], "bench")
    client = TestClient(create_app(work, tokens), base_url="http://127.0.0.1")
    client.get(f"/login?token={next(iter(tokens))}")
    batch_id = result.report["batch_id"]
    page = f"/batch/bench/{batch_id}"
    range_code = "schema:range:applicant_age"
    requests = [
        ("batch page, first 50 of all", {}),
        ("only_reason=" + range_code, {"only_reason": range_code}),
        ("same, sorted by annual_income", {"only_reason": range_code, "sort": "annual_income", "order": "desc"}),
        ("detector=label_model", {"detector": "label_model"}),
        ("last page of all", {"page": "100000"}),
    ]
    table = []
    for name, params in requests:
        seconds, matched = [], ""
        for _ in range(repeats):
            began = time.perf_counter()
            answer = client.get(page, params=params)
            seconds.append(time.perf_counter() - began)
            assert answer.status_code == 200, answer.text[:500]
            matched = re.search(r"<strong>([\d,]+)</strong> of ([\d,]+)", answer.text).group(1)
        table.append({"request": name, "seconds": statistics.median(seconds), "rows matched": matched})
    csrf = re.search(r'name="csrf" value="([^"]+)"', client.get(page).text).group(1)
    began = time.perf_counter()
    answer = client.post(page + "/decide", data={"csrf": csrf, "only_reason": range_code, "scope": "matching",
                                                 "action": "release", "decision_reason": "policy change"})
    decided = time.perf_counter() - began
    notice = re.search(r'id="notice">([^<]*)<', answer.text).group(1)
    released = len(released_row_ids(work, "bench", batch_id))
    table.append({"request": "release every only_reason match (one decision, page after it)", "seconds": decided,
                  "rows matched": f"{released:,} released"})
    print(f"scan of {rows:,} rows: {scanned:.1f} s; {result.report['rows']['quarantined']:,} quarantined; "
          f"decision: {notice}")
    return table


def to_markdown(table: list[dict]) -> str:
    lines = ["| request | seconds (median) | rows matched |", "|---|---:|---:|"]
    lines += [f"| {r['request']} | {r['seconds']:.3f} | {r['rows matched']} |" for r in table]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--write", action="store_true", help="write the table into benchmarks/RESULTS.md")
    args = parser.parse_args()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = measure(args.rows, args.repeats)
    markdown = to_markdown(table)
    print(markdown)
    if args.write:
        from benchmarks.results import write_section

        write_section("review_app", f"The review app on a quarantine of {args.rows:,} rows", __doc__.split("\n\n", 2)[2]
                      .strip() + "\n\n" + markdown)


if __name__ == "__main__":
    main()
