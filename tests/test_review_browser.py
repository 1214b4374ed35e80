"""The review app in a real headless Chromium (Debian's chromium and chromium-driver, through Selenium)."""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
from test_review import conserved

from poisonguard import REASONS
from poisonguard.review.app import create_app, login_tokens
from poisonguard.review.audit import AuditLog
from poisonguard.review.batches import released_row_ids
from poisonguard.review.reviewers import load_reviewers
from poisonguard.write.outputs import OutputPaths

SCREENSHOTS = os.environ.get("POISONGUARD_SCREENSHOTS")  # a folder to keep the pages' screenshots in


def _browser():
    webdriver = pytest.importorskip("selenium.webdriver")
    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if browser is None or driver is None:
        if os.environ.get("CI"):
            pytest.fail("chromium or chromedriver is missing; .ci/run installs Debian's chromium and chromium-driver")
        pytest.skip("chromium and chromedriver are not installed here (CI installs them)")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--window-size=1400,1000"):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver))


def navigate(browser, element, timeout: float = 120.0) -> None:
    """Click an element that loads a new page and wait until it has loaded.

    A click does not always wait for the page it leads to (a decision's POST and its redirect can take seconds on a
    loaded two-core CI machine): without this, the next lookup read the old page and found no notice. The old page
    is marked with a script variable, and the wait ends when a complete document without the mark is in the window.
    Selenium's `staleness_of` was used before and failed once in CI: chromedriver answered its probe of the old
    element, mid-navigation, with a generic "Node with given id does not belong to the document" instead of a stale
    element error, which `staleness_of` does not catch.
    """
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.support.ui import WebDriverWait

    browser.execute_script("window.poisonguardOldPage = true;")
    element.click()

    def loaded(b) -> bool:
        try:
            return b.execute_script(
                "return window.poisonguardOldPage === undefined && document.readyState === 'complete';")
        except WebDriverException:  # the window is between documents: ask again
            return False

    WebDriverWait(browser, timeout).until(loaded)


@pytest.fixture()
def served(signed_out):
    """The review app on a free local port, served by uvicorn in a thread: (url, token, summary, out, reviewers)."""
    import uvicorn

    summary, out, reviewers, key = signed_out
    tokens = login_tokens(reviewers, [key], None)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(out, tokens, reviewers), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "the review app did not start"
    yield f"http://127.0.0.1:{port}", next(iter(tokens)), summary, out, reviewers
    server.should_exit = True
    thread.join(timeout=10)


def test_a_reviewer_filters_releases_undoes_and_confirms_in_the_browser(served, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    url, token, summary, out, reviewers = served
    held = pd.read_parquet(OutputPaths.for_batch(out, summary.dataset, summary.batch_id).quarantine)
    code, count = Counter(c[0] for c in held[REASONS] if len(c) == 1).most_common(1)[0]
    shots = Path(SCREENSHOTS) if SCREENSHOTS else tmp_path
    browser = _browser()
    try:
        browser.get(f"{url}/login?token={token}")
        assert browser.find_element(By.TAG_NAME, "h1").text == "Review queue"
        pending = browser.find_element(By.CSS_SELECTOR, f"#queue-{summary.dataset} .pending-count").text
        assert pending == f"{summary.rows_quarantined:,}"
        browser.save_screenshot(str(shots / "queue.png"))
        navigate(browser, browser.find_element(By.LINK_TEXT, summary.batch_id))

        def decide(action: str, reason: str, matching: bool) -> str:
            browser.find_element(By.ID, "scope-matching" if matching else "scope-selected").click()
            Select(browser.find_element(By.ID, "action")).select_by_value(action)
            browser.find_element(By.ID, "decision-reason").send_keys(reason)
            navigate(browser, browser.find_element(By.ID, "submit-decision"))
            notices = browser.find_elements(By.ID, "notice")
            assert notices, f"no notice after the decision; the page reads:\n{browser.find_element(By.TAG_NAME, 'body').text[:2000]}"
            return notices[0].text

        def filter_by(field: str, value: str) -> None:
            navigate(browser, browser.find_element(By.LINK_TEXT, "clear"))
            Select(browser.find_element(By.ID, field)).select_by_visible_text(value)
            navigate(browser, browser.find_element(By.ID, "apply-filter"))

        filter_by("f-only-reason", code)
        assert browser.find_element(By.ID, "matched").text.startswith(f"{count:,} of")
        browser.save_screenshot(str(shots / "batch.png"))
        assert f"{count:,} row(s) released by alice" in decide("release", "the range rule is too tight", True)

        filter_by("f-status", "released")
        first = browser.find_elements(By.CSS_SELECTOR, "#rows input[type=checkbox]")[0]
        undone = int(first.get_attribute("value"))
        first.click()
        assert "1 row(s) taken back to pending" in decide("undo", "looked again: poison", False)

        filter_by("f-status", "pending")
        assert f"{summary.rows_quarantined - count + 1:,} row(s) confirmed" in decide("confirm", "the rest", True)
    finally:
        browser.quit()
    released = released_row_ids(out, summary.dataset, summary.batch_id)
    assert len(released) == count - 1 and undone not in released
    conserved(out, summary)  # the released rows are in the clean area exactly once, the others held
    check = AuditLog(out).verify(load_reviewers(reviewers))
    assert check.ok and check.entries == 3, check.problems
    assert all(entry.get("signature") and entry["reviewer"] == "alice" for entry in AuditLog(out).entries())
