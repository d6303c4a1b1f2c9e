"""The operator console in a real browser (headless Chromium + chromedriver).

Run by tests/suite/console.rs against a running `hubflow` admin port:

    HUBFLOW_ADMIN_URL=http://127.0.0.1:PORT HUBFLOW_TOKEN=... \
    CHROMIUM=/usr/bin/chromium CHROMEDRIVER=/usr/bin/chromedriver \
    [HUBFLOW_SCREENSHOT=docs/console.png] \
    .tools/venv/bin/python tests/suite/console_test.py

Checks, each with a bounded wait and each through clicks on the page, read
back from what the page then shows: the page loads with no console errors
and shows the running actors; with the token, a kill restarts the fetcher
with a new generation; "Pause ingest" shows every consumer and the ingest
badge paused, "Resume ingest" running again, and the fetcher's own Pause /
Resume the same for it; draining an ingest partition group shows it
drained, and Restart running with a higher generation; a transform swap is
promoted; a source settings swap (the Sources panel) is promoted and the
panel, its spec log and the fetcher's row show the new version; a replay
of partition 0 reaches completed with a full progress bar; a dead letter
the demo's non-object record caused is listed, Inspect shows its reason
and body, a redrive of the stored body is refused, and a redrive with a
corrected payload marks it redriven; a wrong token is refused. Exits 0
when every check passed.
"""

import json
import os
import sys
import tempfile
import time

from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

URL = os.environ["HUBFLOW_ADMIN_URL"].rstrip("/")
TOKEN = os.environ["HUBFLOW_TOKEN"]
SCREENSHOT = os.environ.get("HUBFLOW_SCREENSHOT")
FETCHER = "pipeline/sources/fetcher-demo"
CONSUMER = "pipeline/ingest/p0000/consumer"
# The group drained and restarted from the page (writer and consumer).
GROUP = "pipeline/ingest/p0001"
# Failed control calls the browser logs as failed resources (the page shows
# them as messages): the refused redrive of a stored non-object body.
EXPECTED_FAILURES = ("status of 422",)


def step(text):
    print(f"[console] {time.strftime('%H:%M:%S')} {text}", flush=True)


def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    for arg in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1440,1300",
        "--no-first-run",
        "--disable-extensions",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--metrics-recording-only",
        f"--user-data-dir={tempfile.mkdtemp(prefix='hubflow-chromium-')}",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver"))
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(30)
    driver.set_script_timeout(30)
    return driver


def wait(driver, seconds, what, condition):
    try:
        return WebDriverWait(
            driver, seconds, poll_frequency=0.2, ignored_exceptions=(StaleElementReferenceException,)
        ).until(lambda d: condition(d))
    except TimeoutException:
        raise AssertionError(f"timed out after {seconds}s waiting for {what}") from None


def wait_clicking(driver, seconds, what, button_id, condition, every=2.0):
    """Click `button_id` (a refresh) every `every` s until `condition` holds;
    bounded by `seconds` in all."""
    deadline = time.monotonic() + seconds
    while True:
        driver.find_element(By.ID, button_id).click()
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"timed out after {seconds}s waiting for {what}")
        try:
            return wait(driver, min(every, left), what, condition)
        except AssertionError:
            if time.monotonic() >= deadline:
                raise AssertionError(f"timed out after {seconds}s waiting for {what}") from None


def text_of(driver, css):
    found = driver.find_elements(By.CSS_SELECTOR, css)
    return found[0].text if found else None


def severe(driver, allowed=()):
    """Console entries at level SEVERE, less those containing an allowed text."""
    entries = driver.get_log("browser")
    return [
        e for e in entries if e.get("level") == "SEVERE" and not any(a in e.get("message", "") for a in allowed)
    ]


def row(path):
    return f'tr[data-path="{path}"]'


def set_value(driver, element_id, value):
    element = driver.find_element(By.ID, element_id)
    element.clear()
    element.send_keys(value)


def generation(driver, path):
    text = text_of(driver, row(path) + " td.gen")
    return int(text) if text and text.isdigit() else None


def state(driver, path):
    return text_of(driver, row(path) + " td.state")


def click_action(driver, path, action):
    driver.find_element(By.CSS_SELECTOR, f'{row(path)} button[data-action="{action}"]').click()


def attr(driver, element_id, name):
    return driver.find_element(By.ID, element_id).get_attribute(name)


def message(driver):
    return driver.find_element(By.ID, "message").text


def main():
    driver = browser()
    try:
        run(driver)
    except Exception:
        try:
            step("page text at failure:\n" + driver.find_element(By.TAG_NAME, "body").text[:4000])
            step("console log: " + json.dumps(driver.get_log("browser"))[:4000])
        finally:
            driver.quit()
        raise
    driver.quit()


def run(driver):
    step(f"loading {URL}/ui")
    driver.get(URL + "/ui")
    assert driver.title == "Hubflow console", driver.title
    wait(driver, 30, "the event stream to go live", lambda d: text_of(d, "#conn") == "live")
    wait(driver, 30, "the fetcher in the tree", lambda d: d.find_elements(By.CSS_SELECTOR, row(FETCHER)))
    wait(
        driver,
        30,
        "partition p0000 and its consumer running",
        lambda d: text_of(d, row("pipeline/ingest/p0000/consumer") + " td.state") == "running",
    )
    assert text_of(driver, row(FETCHER) + " td.state") == "running"
    wait(driver, 30, "records flowing in the charts", lambda d: (text_of(d, "#rate-fetched") or "–") != "–")
    # Read-only without a token: control buttons are disabled.
    kill = driver.find_element(By.CSS_SELECTOR, row(FETCHER) + ' button[data-action="kill"]')
    assert not kill.is_enabled(), "kill is enabled without a token"
    errors = severe(driver)
    assert not errors, f"console errors on load: {errors}"
    step("page loaded, tree shows the running actors, no console errors")

    set_value(driver, "token", TOKEN)
    driver.find_element(By.ID, "token-use").click()
    wait(
        driver,
        15,
        "the token to be accepted",
        lambda d: d.find_element(By.ID, "auth").get_attribute("data-state") == "control",
    )
    assert driver.find_element(By.ID, "token").get_attribute("value") == "", "the token stays in the box"
    step("token accepted")

    before = generation(driver, FETCHER)
    assert before is not None
    driver.find_element(By.CSS_SELECTOR, row(FETCHER) + ' button[data-action="kill"]').click()
    wait(
        driver,
        60,
        f"{FETCHER} to run again with a generation above {before}",
        lambda d: (generation(d, FETCHER) or 0) > before and text_of(d, row(FETCHER) + " td.state") == "running",
    )
    step(f"killed {FETCHER}: generation {before} -> {generation(driver, FETCHER)}")

    pause_and_resume(driver)
    drain_and_restart(driver)

    dry_run(driver)

    set_value(driver, "transform-sql", "SELECT * FROM batch")
    set_value(driver, "transform-label", "v-console")
    set_value(driver, "transform-probation", "2")
    driver.find_element(By.ID, "transform-swap").click()
    wait(
        driver,
        120,
        "the swap to finish",
        lambda d: d.find_element(By.ID, "transform-result").get_attribute("data-outcome") not in ("", "running"),
    )
    outcome = driver.find_element(By.ID, "transform-result").get_attribute("data-outcome")
    assert outcome == "promoted", driver.find_element(By.ID, "transform-result").text
    wait(
        driver,
        30,
        "v-console promoted in the spec log and active",
        lambda d: "promoted" in (text_of(d, 'tr[data-version="v-console"] td.outcome') or "")
        and (text_of(d, "#transform-version") or "").startswith("v-console"),
    )
    step("transform swap from the page promoted")
    errors = severe(driver)
    assert not errors, f"console errors after kill and swap: {errors}"

    source_swap(driver)
    replay(driver)
    dead_letters(driver)
    errors = severe(driver, allowed=EXPECTED_FAILURES)
    assert not errors, f"console errors after the panels: {errors}"

    if SCREENSHOT:
        time.sleep(3)  # a few more chart points
        driver.save_screenshot(SCREENSHOT)
        step(f"screenshot saved to {SCREENSHOT}")

    set_value(driver, "token", "not-the-token-0000")
    driver.find_element(By.ID, "token-use").click()
    wait(
        driver,
        15,
        "the wrong token to be refused",
        lambda d: d.find_element(By.ID, "auth").get_attribute("data-state") == "refused"
        and "token refused" in d.find_element(By.ID, "message").text,
    )
    kill = driver.find_element(By.CSS_SELECTOR, row(FETCHER) + ' button[data-action="kill"]')
    assert not kill.is_enabled(), "control stays enabled after a refused token"
    # The browser logs the refused call itself (a 401 resource); nothing else.
    errors = severe(driver, allowed=("status of 401",) + EXPECTED_FAILURES)
    assert not errors, f"console errors: {errors}"
    step("wrong token refused")
    print("console test passed", flush=True)


def dry_run(driver):
    """Dry run from the page: the first rows before and after the SQL, the
    added column marked, nothing swapped; a refused SQL says why."""
    active = text_of(driver, "#transform-version")
    set_value(driver, "transform-sql", "SELECT *, upper(type) AS kind FROM batch")
    driver.find_element(By.ID, "transform-dry-run").click()
    wait(driver, 60, "the dry run's rows", lambda d: attr(d, "transform-preview", "data-state") == "done")
    before = driver.find_elements(By.CSS_SELECTOR, '#transform-preview table[data-side^="before"] th')
    after = driver.find_elements(By.CSS_SELECTOR, '#transform-preview table[data-side="after"] th')
    before_cols = [th.text for th in before]
    added = [th.text for th in after if "added" in (th.get_attribute("class") or "")]
    assert "kind" not in before_cols and "type" in before_cols, before_cols
    assert added == ["kind"], f"added columns: {added}"
    rows = driver.find_elements(By.CSS_SELECTOR, '#transform-preview table[data-side="after"] tbody tr')
    assert 1 <= len(rows) <= 5, len(rows)
    assert text_of(driver, "#transform-version") == active, "a dry run swapped the transform"
    set_value(driver, "transform-sql", "SELECT id FROM batch")
    driver.find_element(By.ID, "transform-dry-run").click()
    wait(driver, 60, "the dry run to be refused", lambda d: attr(d, "transform-preview", "data-state") == "refused")
    refusal = driver.find_element(By.ID, "transform-result").text
    assert "lacks metadata column" in refusal, refusal
    # The browser logs the refused call itself (a 422 resource); nothing else.
    errors = severe(driver, allowed=("status of 422",))
    assert not errors, f"console errors after the dry runs: {errors}"
    step(f"dry run from the page: {len(rows)} rows before and after, column kind added; a bad SQL refused")


def pause_and_resume(driver):
    """Ingest, then the fetcher: paused in the tree, then running again."""
    driver.find_element(By.ID, "ingest-pause").click()
    wait(
        driver,
        30,
        "every consumer paused",
        lambda d: attr(d, "ingest-state", "data-state") == "paused" and state(d, CONSUMER) == "paused",
    )
    assert "ingest paused" in (text_of(driver, "#totals") or ""), text_of(driver, "#totals")
    step("ingest paused from the page: consumers show paused")
    driver.find_element(By.ID, "ingest-resume").click()
    wait(
        driver,
        30,
        "every consumer running again",
        lambda d: attr(d, "ingest-state", "data-state") == "running" and state(d, CONSUMER) == "running",
    )
    step("ingest resumed: consumers running")

    click_action(driver, FETCHER, "pause")
    wait(
        driver,
        30,
        f"{FETCHER} paused",
        lambda d: state(d, FETCHER) == "paused" and "demo" in (text_of(d, "#paused-sources") or ""),
    )
    step(f"{FETCHER} paused from its row")
    click_action(driver, FETCHER, "resume")
    wait(
        driver,
        30,
        f"{FETCHER} running again",
        lambda d: state(d, FETCHER) == "running" and not text_of(d, "#paused-sources"),
    )
    step(f"{FETCHER} resumed")


def drain_and_restart(driver):
    """A partition group: drained, then running with a higher generation."""
    wait(driver, 30, f"{GROUP} running", lambda d: state(d, GROUP) == "running")
    before = generation(driver, GROUP)
    assert before is not None
    click_action(driver, GROUP, "drain")
    wait(
        driver,
        60,
        f"{GROUP} drained",
        lambda d: state(d, GROUP) == "drained" and f"drain {GROUP}: done" in message(d),
    )
    step(f"{GROUP} drained from the page")
    click_action(driver, GROUP, "restart")
    wait(
        driver,
        60,
        f"{GROUP} running with a generation above {before}",
        lambda d: state(d, GROUP) == "running"
        and (generation(d, GROUP) or 0) > before
        and state(d, GROUP + "/consumer") == "running",
    )
    step(f"{GROUP} restarted: generation {before} -> {generation(driver, GROUP)}")


def source_swap(driver):
    """The demo source's settings with smaller pages: promoted, and the new
    version shown in the panel, its spec log and the fetcher's row."""
    wait(
        driver,
        30,
        "source demo in the Sources panel",
        lambda d: d.find_elements(By.CSS_SELECTOR, '#source-name option[value="demo"]'),
    )
    Select(driver.find_element(By.ID, "source-name")).select_by_value("demo")
    wait(driver, 15, "the demo settings", lambda d: attr(d, "source-version", "data-version") == "config")
    settings = json.loads(attr(driver, "source-json", "value"))
    assert settings["name"] == "demo", settings
    settings.setdefault("query", {})["limit"] = "500"
    set_value(driver, "source-json", json.dumps(settings))
    set_value(driver, "source-label", "limit-500")
    set_value(driver, "source-probation", "2")
    driver.find_element(By.ID, "source-swap").click()
    wait(
        driver,
        120,
        "the source swap to finish",
        lambda d: attr(d, "source-result", "data-outcome") not in ("", "running", None),
    )
    outcome = attr(driver, "source-result", "data-outcome")
    assert outcome == "promoted", driver.find_element(By.ID, "source-result").text
    wait(
        driver,
        30,
        "limit-500 running, promoted in the source's spec log and on the fetcher",
        lambda d: attr(d, "source-version", "data-version") == "limit-500"
        and "promoted" in (text_of(d, '#source-log-body tr[data-version="limit-500"] td.outcome') or "")
        and text_of(d, row(FETCHER) + " td.version") == "limit-500"
        and state(d, FETCHER) == "running",
    )
    step("source settings swap from the page promoted: limit-500 shown")


def replay(driver):
    """Partition 0's first records replayed: the job completes, bar full."""
    set_value(driver, "replay-partition", "0")
    set_value(driver, "replay-from", "0")
    set_value(driver, "replay-to", "999")
    driver.find_element(By.ID, "replay-start").click()
    wait(driver, 15, "the replay to start", lambda d: attr(d, "replays", "data-last"))
    job = attr(driver, "replays", "data-last")
    job_row = f'tr[data-replay="{job}"]'

    def finished(d):
        # The rows are redrawn with every status event: read one at once.
        found = d.find_elements(By.CSS_SELECTOR, job_row)
        if not found or found[0].get_attribute("data-state") not in ("completed", "failed"):
            return False
        bar = found[0].find_element(By.CSS_SELECTOR, "progress")
        progress = found[0].find_element(By.CSS_SELECTOR, "td.progress").text.strip()
        return (
            found[0].get_attribute("data-state"),
            bar.get_attribute("value"),
            bar.get_attribute("max"),
            progress,
            found[0].text,
        )

    job_state, value, maximum, progress, text = wait(driver, 120, f"replay {job} to finish", finished)
    assert job_state == "completed", text
    assert value == maximum and float(maximum) >= 1, (value, maximum, text)
    assert progress.endswith("(100%)") and not progress.startswith("0/"), progress
    step(f"replay {job} of partition 0 completed: {progress}")


def dead_letters(driver):
    """A transform dead letter: listed, inspected (reason and body), the
    stored body refused, redriven with a corrected payload."""
    letter = 'tr[data-stage="transform"][data-redriven="false"]'
    wait_clicking(
        driver,
        60,
        "a pending transform dead letter in the list",
        "dlq-refresh",
        lambda d: d.find_elements(By.CSS_SELECTOR, letter),
    )
    first = driver.find_element(By.CSS_SELECTOR, letter)
    letter_id = first.get_attribute("data-id")
    reason = first.find_element(By.CSS_SELECTOR, "td.reason").text
    assert "not an object" in reason, reason
    first.find_element(By.CSS_SELECTOR, 'button[data-action="inspect"]').click()
    wait(
        driver,
        15,
        f"{letter_id} inspected",
        lambda d: attr(d, "dlq-detail", "data-id") == letter_id
        and "is not an object" in attr(d, "dlq-detail", "textContent")
        and d.find_element(By.ID, "dlq-redrive-box").is_displayed(),
    )
    detail = json.loads(attr(driver, "dlq-detail", "textContent"))
    assert detail["info"]["reason"] == reason, detail
    assert "is not an object" in detail["body_preview"], detail
    assert attr(driver, "dlq-payload", "value") == detail["body_preview"]
    step(f"dead letter {letter_id} inspected: {reason}; body {detail['body_preview']}")

    # As stored, it would only be rejected again: refused, nothing changes.
    driver.find_element(By.ID, "dlq-redrive").click()
    wait(driver, 15, "the stored body refused", lambda d: "redrive failed" in message(d))
    assert "not a JSON object" in message(driver), message(driver)

    record_id = detail["info"]["context"]["record_id"]
    set_value(driver, "dlq-payload", json.dumps({"id": record_id, "type": "redriven"}))
    driver.find_element(By.ID, "dlq-redrive").click()
    wait(driver, 15, f"{letter_id} redriven", lambda d: f"redriven {letter_id}" in message(d))
    assert "corrected payload" in message(driver), message(driver)
    pending = driver.find_element(By.ID, "dlq-pending")
    if pending.is_selected():
        pending.click()
    done = f'tr[data-id="{letter_id}"]'
    wait(
        driver,
        15,
        f"{letter_id} marked redriven",
        lambda d: d.find_elements(By.CSS_SELECTOR, done)
        and d.find_element(By.CSS_SELECTOR, done).get_attribute("data-redriven") == "true"
        and "(redriven)" in d.find_element(By.CSS_SELECTOR, done + " td.created").text
        and not d.find_elements(By.CSS_SELECTOR, done + ' button[data-action="redrive"]'),
    )
    wait(
        driver,
        15,
        "the inspected letter shows its redrive",
        lambda d: '"redriven": {' in attr(d, "dlq-detail", "textContent")
        and not d.find_element(By.ID, "dlq-redrive-box").is_displayed(),
    )
    step(f"dead letter {letter_id} redriven from the page with a corrected payload")


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print(f"console test FAILED: {e}", file=sys.stderr, flush=True)
        sys.exit(1)
