"""The jobs page of `fleet serve` in a real browser (issue 21, point 7): headless Chromium from
Debian's packages (`chromium`, `chromium-driver`, installed by scripts/setup) driven by
Selenium, given both paths (no browser or driver download: Selenium Manager never runs), on
the test bed: log in with the URL serve printed, see a running 3-host job appear, its hosts'
lines arrive live, a hostile line shown as text, Stop, Stopped.

The job page's screenshot is kept: under the test's tmp dir and copied to ARTIFACTS (the
path is printed: `pytest -s` or the captured output of a failure shows it)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import make_job
from support.serving import free_port, serve_argv

boto3 = pytest.importorskip("boto3")
webdriver = pytest.importorskip("selenium.webdriver")
pytestmark = pytest.mark.integration

from selenium.common.exceptions import (  # noqa: E402
    NoSuchElementException,
    StaleElementReferenceException,
    WebDriverException,
)
from selenium.webdriver.chrome.service import Service  # noqa: E402 (after the skip)
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
ARTIFACTS = Path(os.environ.get("FLEET_TEST_ARTIFACTS", "/var/tmp/fleet-test-artifacts"))
KEY, SECRET = "AKIDFLEETPAGETEST001", "fleet-page-test-secret"
# The first line every host prints: markup and terminal escapes (OSC title, SGR colour, clear screen).
HOSTILE = r"printf '<script>window.pwned=1</script><img src=x onerror=window.pwned=2> \033]0;owned\007\033[31mred\033[2J\n'"
HOSTILE_SHOWN = r"<script>window.pwned=1</script><img src=x onerror=window.pwned=2> \x1b]0;owned\x07\x1b[31mred\x1b[2J"


@pytest.fixture
def served(fleet) -> Iterator[tuple[str, str]]:
    """A `fleet serve` on the bed: (its URL, the login URL it printed for the operator)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = fleet.env(AWS_ACCESS_KEY_ID=KEY, AWS_SECRET_ACCESS_KEY=SECRET, AWS_REGION="us-east-1",
                    AWS_CONFIG_FILE="/dev/null", AWS_SHARED_CREDENTIALS_FILE="/dev/null")
    log = fleet.tmp / "serve.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(serve_argv(fleet.cluster.inventory, port), env=env, stdout=out, stderr=out,
                                   cwd=fleet.tmp)
    try:
        login = None
        for _ in range(300):
            found = re.search(r"the jobs page for fleet-controller: (\S+)", log.read_text())
            if found:
                login = found[1]
                break
            assert process.poll() is None, log.read_text()
            time.sleep(0.1)
        assert login and login.startswith(f"{url}/login?token="), log.read_text()
        yield url, login
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
        _wait_workers(fleet)


def _wait_workers(fleet, timeout: float = 60) -> None:
    """The jobs' own fleet processes outlive the server: let them end (the fixture then
    checks that no job left anything on a host)."""
    jobs = fleet.home / "jobs"
    for _ in range(int(timeout / 0.3)):
        if not [p for p in (jobs.glob("*/describe.json") if jobs.exists() else [])
                if json.loads(p.read_text()).get("ProcessingJobStatus") in ("InProgress", "Stopping")]:
            return
        time.sleep(0.3)


@pytest.fixture
def browser():
    if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
        pytest.skip("chromium and chromium-driver are not installed (run scripts/setup)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1400"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _lines(driver, host: str) -> list[str]:
    return [e.text for e in driver.find_elements(By.CSS_SELECTOR, f"#log-{host} .line")]


def _ticks(driver, host: str) -> int:
    """The last `tick-N` the page shows for `host` (0: none yet)."""
    numbers = [int(line[5:]) for line in _lines(driver, host) if line.startswith("tick-")]
    return max(numbers, default=0)


def test_the_page_shows_a_running_job_live_and_stops_it(fleet, served, browser, tmp_path):
    url, login = served
    # Without the login: 401, for the list, a job and its events alike.
    for path in ("/", "/jobs/anything", "/jobs/anything/events"):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(url + path, timeout=10)
        assert refused.value.code == 401, path
    browser.get(url + "/")
    assert "Sign in first" in browser.find_element(By.TAG_NAME, "body").text

    browser.get(login)
    assert browser.current_url == url + "/"  # the token is not left in the address bar
    wait = WebDriverWait(browser, 90, poll_frequency=0.2,
                         # An element of the page being replaced (the Stop form's answer loads
                         # the job page again) is stale, or, as Chromium 156 may say, "does not
                         # belong to the document" (a plain WebDriverException): look again.
                         ignored_exceptions=(NoSuchElementException, StaleElementReferenceException,
                                             WebDriverException))
    script = f"{HOSTILE}; i=0; while [ $i -lt 600 ]; do i=$((i+1)); echo tick-$i; sleep 0.2; done"
    job = {**make_job(script, count=3), "RoleArn": "arn:aws:iam::000000000000:role/fleet-test",
           "Environment": {"PAGE_SECRET": "page-secret-value"}}
    name = job["ProcessingJobName"]
    sm = boto3.session.Session(aws_access_key_id=KEY, aws_secret_access_key=SECRET,
                               region_name="us-east-1").client("sagemaker", endpoint_url=url)
    sm.create_processing_job(**job)

    # The list, left open, shows the new job (it refreshes itself), running on 3 hosts.
    row = f'#jobs tr[data-job="{name}"]'
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, row)
               and d.find_element(By.CSS_SELECTOR, f"{row} .hosts").text == "3")
    assert browser.find_element(By.CSS_SELECTOR, f"{row} .status").text == "InProgress"
    browser.find_element(By.CSS_SELECTOR, f"{row} a").click()

    # Each host's lines arrive while the page stays open (no reload): more ticks each look.
    hosts = ("algo-1", "algo-2", "algo-3")
    wait.until(lambda d: all(_ticks(d, host) >= 3 for host in hosts))
    seen = {host: _ticks(browser, host) for host in hosts}
    wait.until(lambda d: all(_ticks(d, host) >= seen[host] + 5 for host in hosts))
    for host in hosts:
        assert _lines(browser, host)[0] == HOSTILE_SHOWN  # as text, escapes as the terminal shows them
    assert browser.execute_script("return window.pwned") is None
    assert not browser.find_elements(By.CSS_SELECTOR, "#logs script, #logs img")
    request = browser.find_element(By.ID, "request").text
    assert "PAGE_SECRET" in request and "page-secret-value" not in browser.page_source

    browser.execute_script("window.scrollTo(0, 0)")
    shot = tmp_path / "job-page.png"
    assert browser.save_screenshot(str(shot))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    kept = ARTIFACTS / "serve-page-job.png"
    shutil.copyfile(shot, kept)
    print(f"screenshot of the job page: {kept}")

    browser.find_element(By.CSS_SELECTOR, "#stop button").click()
    try:
        wait.until(lambda d: d.find_element(By.ID, "status").text == "Stopped")
    except Exception:
        print(browser.current_url, browser.page_source[:3000], (fleet.tmp / "serve.log").read_text()[-3000:],
              fleet.record(name).get("ProcessingJobStatus"), sep="\n")
        for path in (fleet.home / "jobs" / name).glob("*.log"):
            print(path, path.read_text()[-2000:])
        raise
    assert not browser.find_elements(By.ID, "stop")
    assert sm.describe_processing_job(ProcessingJobName=name)["ProcessingJobStatus"] == "Stopped"
    exit_codes = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#hosts .exit")]
    assert len(exit_codes) == 3 and all(exit_codes), exit_codes
