"""The operator console in a real browser (headless Chromium + chromedriver).

Run by tests/suite/console.rs against a running `hubflow` admin port:

    HUBFLOW_ADMIN_URL=http://127.0.0.1:PORT HUBFLOW_TOKEN=... \
    CHROMIUM=/usr/bin/chromium CHROMEDRIVER=/usr/bin/chromedriver \
    [HUBFLOW_SCREENSHOT=docs/console.png] \
    .tools/venv/bin/python tests/suite/console_test.py

Checks, each with a bounded wait: the page loads with no console errors and
shows the running actors; with the token, a kill from the page restarts the
actor and the page shows its new generation; a transform swap from the page
is promoted; a wrong token is refused. Exits 0 when every check passed.
"""

import json
import os
import sys
import tempfile
import time

from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

URL = os.environ["HUBFLOW_ADMIN_URL"].rstrip("/")
TOKEN = os.environ["HUBFLOW_TOKEN"]
SCREENSHOT = os.environ.get("HUBFLOW_SCREENSHOT")
FETCHER = "pipeline/sources/fetcher-demo"


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
        return WebDriverWait(driver, seconds, poll_frequency=0.2).until(lambda d: condition(d))
    except TimeoutException:
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
    errors = severe(driver, allowed=("status of 401",))
    assert not errors, f"console errors: {errors}"
    step("wrong token refused")
    print("console test passed", flush=True)


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print(f"console test FAILED: {e}", file=sys.stderr, flush=True)
        sys.exit(1)
