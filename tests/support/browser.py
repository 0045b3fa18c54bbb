"""The built-in web page's test harness: a real `myason api` process over a SQLite store, a headless
Chromium driven by Selenium (Debian's chromium and chromium-driver, installed on first use; the
tests skip only when that is impossible), and what the page tests measure with it."""
import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MYASON = [sys.executable, str(ROOT / "myason.py")]
TOKEN = "page-test-token-" + uuid.uuid4().hex[:8]
DEADLINE = 30.0


def chromium():
    """(chromium, chromedriver) paths, installing Debian's packages when missing; skip if impossible."""
    def found():
        return shutil.which("chromium"), shutil.which("chromedriver")
    if not all(found()) and os.geteuid() == 0 and shutil.which("apt-get"):
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        cmd = ["apt-get", "install", "-y", "-q", "chromium", "chromium-driver"]
        if subprocess.run(cmd, env=env, capture_output=True, timeout=900).returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=300)
            subprocess.run(cmd, env=env, capture_output=True, timeout=900)
    chrome, driver = found()
    if not (chrome and driver):
        pytest.skip("chromium and chromium-driver are not installed and apt-get could not install them")
    return chrome, driver


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url):
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status
    except OSError:
        return None


@contextlib.contextmanager
def serve(db, tmp_path, extra_config=""):
    """A real `myason api` process over the SQLite file `db`; yields its base address."""
    port = _free_port()
    conf = tmp_path / "api.yaml"
    conf.write_text("bind: 127.0.0.1:%d\ntoken: %s\ndatabase: {type: sqlite, path: %s}\n%s"
                    % (port, TOKEN, db, extra_config))
    log = open(tmp_path / "api.log", "w")
    proc = subprocess.Popen(MYASON + ["api", "-ac", str(conf)], stdout=log, stderr=subprocess.STDOUT, cwd=str(ROOT))
    base = "http://127.0.0.1:%d/" % port
    try:
        deadline = time.monotonic() + DEADLINE
        while _get(base + "healthz") != 200:
            assert proc.poll() is None, "myason api exited:\n" + (tmp_path / "api.log").read_text()
            assert time.monotonic() < deadline, "myason api not ready:\n" + (tmp_path / "api.log").read_text()
            time.sleep(0.1)
        yield base
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            assert proc.wait(30) == 0, (tmp_path / "api.log").read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()


@contextlib.contextmanager
def headless_chromium(shots):
    """A headless Chromium driven by Selenium; leaves a screenshot of its last page in `shots`."""
    _, driver_path = chromium()
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,1600"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=opts)
    try:
        yield driver
    finally:
        driver.save_screenshot(str(shots / "page.png"))
        driver.quit()


def page_errors(driver):
    """Script errors and Content-Security-Policy refusals the browser logged (the page must cause none)."""
    return [e for e in driver.get_log("browser")
            if e.get("source") == "javascript" or "Content Security Policy" in e.get("message", "")]


def wait_for(driver, pred, what):
    """Poll pred(driver) until it returns something truthy; fail with the page's state after DEADLINE."""
    from selenium.common.exceptions import StaleElementReferenceException
    deadline = time.monotonic() + DEADLINE
    while True:
        try:
            value = pred(driver)
        except StaleElementReferenceException:
            value = None        # the page re-rendered what pred was reading: read it again
        if value:
            return value
        if time.monotonic() > deadline:
            errors = [e.text for e in driver.find_elements("css selector", "[data-error='1'], #error, .status.error")
                      if e.text]
            pytest.fail("timed out waiting for %s; errors on the page: %s" % (what, errors))
        time.sleep(0.1)


def css(driver, selector):
    return driver.find_elements("css selector", selector)


def api_json(base, path):
    req = urllib.request.Request(base + path, headers={"Authorization": "Bearer " + TOKEN})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def api_text(base, path):
    req = urllib.request.Request(base + path, headers={"Authorization": "Bearer " + TOKEN})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.read().decode()


def set_viewport(driver, width, height=1000):
    """Exactly `width` CSS pixels of viewport (a window size would include the window's frame)."""
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})


def artifacts_dir():
    """Where browser tests keep their screenshots past the run: $MYASON_TEST_ARTIFACTS, else
    test-artifacts/ in the checkout (git-ignored); pytest's tmp dirs are pruned after three runs."""
    return Path(os.environ.get("MYASON_TEST_ARTIFACTS") or ROOT / "test-artifacts")


def full_screenshot(driver, path):
    """A PNG of the whole page, not only the viewport, at `path` and under artifacts_dir() by the
    same file name (kept there when the artefacts directory cannot be written: the test goes on)."""
    width, height, page = driver.execute_script(
        "return [window.innerWidth, window.innerHeight, document.documentElement.scrollHeight]")
    # The viewport made as tall as the page for the capture: with captureBeyondViewport alone,
    # Chromium left scrolled boxes below the viewport unpainted (a blank IDEA view at 1400 px).
    set_viewport(driver, width, page)
    try:
        shot = driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png"})
    finally:
        set_viewport(driver, width, height)
    data = base64.b64decode(shot["data"])
    path.write_bytes(data)
    try:
        keep = artifacts_dir()
        keep.mkdir(parents=True, exist_ok=True)
        (keep / path.name).write_bytes(data)
    except OSError:
        pass
    return path
