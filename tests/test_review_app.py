"""The review app: who may decide (token, CSRF, reviewers file), escaping, and decisions through the pages."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
from conftest import shown_threshold
from starlette.testclient import TestClient
from test_review import conserved
from test_review_signatures import invoke as cli

from poisonguard import REASONS, ROW_ID
from poisonguard.errors import ConfigError
from poisonguard.review.app import create_app, login_tokens
from poisonguard.review.audit import AuditLog
from poisonguard.review.batches import released_row_ids
from poisonguard.review.reviewers import load_reviewers
from poisonguard.write.outputs import OutputPaths


def client_for(out: Path, reviewers: Path, key: Path) -> tuple[TestClient, str]:
    tokens = login_tokens(reviewers, [key], None)
    (token,) = tokens
    return TestClient(create_app(out, tokens, reviewers), base_url="http://127.0.0.1"), token


def logged_in(client: TestClient, token: str) -> str:
    """Log in; the CSRF token of the session, read from the queue page."""
    page = client.get(f"/login?token={token}")
    assert page.status_code == 200 and "Review queue" in page.text
    return re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)


def batch_url(summary) -> str:
    return f"/batch/{summary.dataset}/{summary.batch_id}"


def notice(page) -> str:
    """The page's notice: what the last decision did, or why it was not made."""
    found = re.search(r'id="notice">([^<]*)<', page.text)
    return found.group(1) if found else ""


def test_without_a_valid_token_nothing_is_shown_or_decided(signed_out):
    summary, out, reviewers, key = signed_out
    client, token = client_for(out, reviewers, key)
    assert client.get("/", follow_redirects=False).headers["location"] == "/login"
    assert client.get(batch_url(summary), follow_redirects=False).status_code == 303
    unauthenticated = {"action": "release", "decision_reason": "x", "scope": "matching"}
    assert client.post(batch_url(summary) + "/decide", data=unauthenticated, follow_redirects=False).status_code == 401
    wrong = client.get("/login?token=" + token[:-2] + "xx")
    assert wrong.status_code == 403 and "not valid" in wrong.text
    assert client.get("/", follow_redirects=False).status_code == 303
    assert not AuditLog(out).path.exists()


def test_a_forged_csrf_token_is_refused(signed_out):
    summary, out, reviewers, key = signed_out
    client, token = client_for(out, reviewers, key)
    logged_in(client, token)
    forged = client.post(batch_url(summary) + "/decide", follow_redirects=False,
                         data={"csrf": "forged", "action": "release", "decision_reason": "x", "scope": "matching"})
    assert forged.status_code == 403 and "CSRF" in forged.text
    assert not AuditLog(out).path.exists()


def test_a_request_for_another_host_is_refused(signed_out):
    _, out, reviewers, key = signed_out
    tokens = login_tokens(reviewers, [key], None)
    client = TestClient(create_app(out, tokens, reviewers), base_url="http://attacker.example")
    assert client.get("/login").status_code == 400


def test_a_hand_made_url_for_no_batch_or_an_unsafe_dataset_is_a_400_on_every_route(signed_out):
    summary, out, reviewers, key = signed_out
    client, token = client_for(out, reviewers, key)
    csrf = logged_in(client, token)
    for dataset, batch in (("%2E%2E", summary.batch_id), (".hidden", summary.batch_id), ("a%5Cb", summary.batch_id),
                           (summary.dataset, "0" * 16), (summary.dataset, "short")):
        assert client.get(f"/batch/{dataset}/{batch}").status_code == 400
        assert client.get(f"/report/{dataset}/{batch}").status_code == 400
        refused = client.post(f"/batch/{dataset}/{batch}/decide", follow_redirects=False,
                              data={"csrf": csrf, "action": "release", "decision_reason": "x", "scope": "matching"})
        assert refused.status_code == 400 and 'id="error"' in refused.text
    assert not AuditLog(out).path.exists()


def test_an_unknown_reviewer_cannot_log_in_or_decide(signed_out, tmp_path):
    summary, out, reviewers, key = signed_out
    cli("keys", "generate", "--source", "mallory", "--key-id", "mallory-k", "--key-dir", tmp_path / "other")
    with pytest.raises(ConfigError, match="belongs to no reviewer"):
        login_tokens(reviewers, [tmp_path / "other" / "mallory-k.pem"], None)
    client, token = client_for(out, reviewers, key)
    csrf = logged_in(client, token)
    # alice is removed from the reviewers file while the server runs: her session can no longer decide.
    data = json.loads(reviewers.read_text())
    data["reviewers"] = {}
    reviewers.write_text(json.dumps(data))
    page = client.post(batch_url(summary) + "/decide", data={"csrf": csrf, "action": "confirm", "scope": "matching",
                                                             "decision_reason": "poison"})
    assert "Not decided" in notice(page) and "belongs to no reviewer" in notice(page)
    assert not AuditLog(out).path.exists()


def test_script_in_a_cell_and_in_a_reason_is_shown_as_text(signed_out):
    summary, out, reviewers, key = signed_out
    path = OutputPaths.for_batch(out, summary.dataset, summary.batch_id).quarantine
    rows = pd.read_parquet(path)
    rows.loc[rows.index[0], "loan_purpose"] = "<script>alert('cell')</script>"
    rows.to_parquet(path, index=False)
    client, token = client_for(out, reviewers, key)
    csrf = logged_in(client, token)
    first = int(rows[ROW_ID].iloc[0])
    page = client.post(batch_url(summary) + "/decide", data={"csrf": csrf, "action": "confirm", "row": str(first),
                                                             "decision_reason": "<script>alert('reason')</script>"})
    assert page.status_code == 200 and "confirmed as poison by alice" in notice(page)
    page = client.get(batch_url(summary), params={"status": "confirmed"})
    assert "<script>" not in page.text
    assert "&lt;script&gt;alert(&#39;cell&#39;)&lt;/script&gt;" in page.text
    assert "&lt;script&gt;alert(&#39;reason&#39;)&lt;/script&gt;" in page.text
    assert "default-src 'none'" in page.headers["content-security-policy"]


def test_filter_release_undo_and_confirm_through_the_app_are_signed_and_conserve_rows(signed_out):
    summary, out, reviewers, key = signed_out
    client, token = client_for(out, reviewers, key)
    csrf = logged_in(client, token)
    held = pd.read_parquet(OutputPaths.for_batch(out, summary.dataset, summary.batch_id).quarantine)
    code, count = Counter(c[0] for c in held[REASONS] if len(c) == 1).most_common(1)[0]
    page = client.get(batch_url(summary), params={"only_reason": code})
    assert f"<strong>{count:,}</strong> of {len(held):,} quarantined rows match" in page.text
    # Each detector's own p-value threshold (the scan's threshold times the weight of the row's class) is
    # stated, as a range over the classes where they differ.
    calibration = json.loads(OutputPaths.for_batch(out, summary.dataset, summary.batch_id).report.read_text())["calibration"]
    for name in calibration["detector_weights"]:
        assert f"{shown_threshold(calibration, name)} ({name})" in page.text
    page = client.post(batch_url(summary) + "/decide", data={"csrf": csrf, "only_reason": code, "scope": "matching",
                                                             "action": "release", "decision_reason": "rule too tight"})
    assert f"{count:,} row(s) released by alice" in notice(page)
    released = sorted(released_row_ids(out, summary.dataset, summary.batch_id).tolist())
    page = client.post(batch_url(summary) + "/decide", data={"csrf": csrf, "row": str(released[0]),
                                                             "action": "undo", "decision_reason": "looked again"})
    assert "1 row(s) taken back to pending" in notice(page)
    page = client.post(batch_url(summary) + "/decide", data={"csrf": csrf, "status": "pending", "scope": "matching",
                                                             "action": "confirm", "decision_reason": "the rest"})
    assert f"{len(held) - count + 1:,} row(s) confirmed as poison" in notice(page)
    assert sorted(released_row_ids(out, summary.dataset, summary.batch_id).tolist()) == released[1:]
    conserved(out, summary)
    check = AuditLog(out).verify(load_reviewers(reviewers))
    assert check.ok and check.entries == 3, check.problems
    # The HTML report, refreshed after each decision, shows each top row's status where a reader looks.
    report = client.get(f"/report/{summary.dataset}/{summary.batch_id}").text
    table = report[report.index('id="quarantined-rows"'):]
    assert "<th>_status</th>" in table and ">confirmed<" in table and ">pending<" not in table
    assert cli("review", "audit", "--verify", "-o", out, "--reviewers", reviewers).exit_code == 0
