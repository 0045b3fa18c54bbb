"""The built-in web page in a real headless Chromium against a real `myason api` over real flows.

The store is SQLite, filled through the real SqliteWriter with the agent's records of
data/demo.pcap (replayed shifted to end just now) and one crafted IDEA event; rollup maintenance
then runs as the writer's housekeeping would. The page is driven with Selenium (Debian's chromium
and chromium-driver); the test skips only when those cannot be installed.
"""
import csv
import importlib.util
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

from myason.record import FIELDS

ROOT = Path(__file__).resolve().parents[2]
MYASON = [sys.executable, str(ROOT / "myason.py")]
TOKEN = "page-test-token-" + uuid.uuid4().hex[:8]
EVENT_DESCRIPTION = "Horizontal scan: 10.66.0.1 probed 64 hosts on port 22"
DEADLINE = 30.0
_INT_FIELDS = {f for f in FIELDS if f not in ("src_ip", "dst_ip", "agent", "if_name", "next_hop", "end_reason",
                                                "first", "last")}


def _chromium():
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


def _demo_module():
    spec = importlib.util.spec_from_file_location("myason_demo_script", ROOT / "scripts" / "demo.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _records(tmp_path):
    """The agent's records of data/demo.pcap shifted to end 90 s ago, as collector rows."""
    pcap = tmp_path / "demo.pcap"
    assert _demo_module().retime_pcap(ROOT / "data" / "demo.pcap", pcap, time.time() - 90)
    out = tmp_path / "flows.csv"
    subprocess.run(MYASON + ["agent", "--read", str(pcap), "--no-export", "--no-progress", "-q",
                             "--output", str(out)], check=True, cwd=str(ROOT), timeout=120)
    rows = []
    with open(out, newline="") as fh:
        for rec in csv.DictReader(fh):
            row = [float(rec[f]) if f in ("first", "last") else int(rec[f]) if f in _INT_FIELDS else rec[f]
                   for f in FIELDS]
            rows.append(row + [time.time(), "127.0.0.1"])
    assert rows
    return rows


def _event():
    now = time.time()
    return {"Format": "IDEA0", "ID": str(uuid.uuid4()),
            "DetectTime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now - 60)),
            "Category": ["Recon.Scanning"], "Description": EVENT_DESCRIPTION,
            "Source": [{"IP4": ["10.66.0.1"], "Proto": ["tcp"]}],
            "Target": [{"IP4": ["192.0.2.%d" % i for i in range(1, 65)], "Port": [22], "Proto": ["tcp"]}],
            "Node": [{"Name": "org.example.myason", "SW": ["myason"]}]}


@pytest.fixture
def store(tmp_path):
    """A SQLite store with the demo flows, one event and up-to-date rollups; yields (path, rows)."""
    from myason.store import rollup
    from myason.store.sqlite import SqliteWriter
    rows = _records(tmp_path)
    path = tmp_path / "flows.db"
    writer = SqliteWriter(path=str(path))
    writer.open()
    try:
        assert writer.write("page-test-1", rows, events=[_event()])
        rollup.maintain(writer)
    finally:
        writer.close()
    return path, rows


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


@pytest.fixture
def api(store, tmp_path):
    """A real `myason api` process over the store; yields its base address."""
    port = _free_port()
    conf = tmp_path / "api.yaml"
    conf.write_text("bind: 127.0.0.1:%d\ntoken: %s\ndatabase: {type: sqlite, path: %s}\n" % (port, TOKEN, store[0]))
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


@pytest.fixture
def browser(tmp_path, request):
    """A headless Chromium driven by Selenium; a screenshot is left in tmp_path when a test fails."""
    _, driver_path = _chromium()
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
        driver.save_screenshot(str(tmp_path / "page.png"))
        driver.quit()


def wait_for(driver, pred, what):
    """Poll pred(driver) until it returns something truthy; fail with the page's state after DEADLINE."""
    deadline = time.monotonic() + DEADLINE
    while True:
        value = pred(driver)
        if value:
            return value
        if time.monotonic() > deadline:
            errors = [e.text for e in driver.find_elements("css selector", "[data-error='1'], #error") if e.text]
            pytest.fail("timed out waiting for %s; errors on the page: %s" % (what, errors))
        time.sleep(0.1)


def css(driver, selector):
    return driver.find_elements("css selector", selector)


def test_page_shows_stored_traffic_tops_events_and_searches(api, browser, store):
    _, rows = store
    browser.get(api + "#token=" + TOKEN)
    # The token leaves the address bar once the page has kept it.
    wait_for(browser, lambda d: "token=" not in d.current_url, "the token to leave the URL")

    chart = wait_for(browser, lambda d: css(d, "#traffic-chart[data-loaded='1']"), "the traffic chart")[0]
    assert int(chart.get_attribute("data-points")) > 0
    assert css(browser, "#traffic-chart svg g.col rect"), "no columns drawn"
    legend = browser.find_element("id", "traffic-legend").text
    assert "tcp" in legend and "udp" in legend

    talkers = wait_for(browser, lambda d: css(d, "#top-talkers[data-loaded='1'] tbody tr"), "top talkers")
    keys = [tr.find_elements("css selector", "td")[1].text for tr in talkers]
    by_bytes = {}
    for r in rows:
        for addr in (r[FIELDS.index("src_ip")], r[FIELDS.index("dst_ip")]):
            by_bytes[addr] = by_bytes.get(addr, 0) + r[FIELDS.index("bytes")]
    assert keys[0] == max(by_bytes, key=by_bytes.get)
    ports = wait_for(browser, lambda d: css(d, "#top-ports[data-loaded='1'] tbody tr"), "top ports")
    assert any(tr.text.split()[1] in ("80", "443", "53") for tr in ports)

    events = wait_for(browser, lambda d: css(d, "#events[data-loaded='1'] tbody tr"), "events")
    assert any(EVENT_DESCRIPTION in tr.text and "10.66.0.1" in tr.text for tr in events)

    # A search typed in the box: every row is a flow of that host on that port.
    box = browser.find_element("id", "search-input")
    box.send_keys("host/192.0.2.80 port/443 after/1h")
    box.submit()
    results = wait_for(browser, lambda d: css(d, "#search-results[data-loaded='1'] tbody tr"), "search results")
    heads = [th.text for th in css(browser, "#search-results thead th")]
    expected = sum(1 for r in rows if "192.0.2.80" in (r[FIELDS.index("src_ip")], r[FIELDS.index("dst_ip")])
                   and 443 in (r[FIELDS.index("src_port")], r[FIELDS.index("dst_port")]))
    assert len(results) == expected > 0
    for tr in results:
        cells = dict(zip(heads, (td.text for td in tr.find_elements("css selector", "td"))))
        assert "192.0.2.80" in (cells["src_ip"], cells["dst_ip"])
        assert "443" in (cells["src_port"], cells["dst_port"])

    # A bad query is shown as an error, and the previous rows are gone.
    box.clear()
    box.send_keys("port/99999")
    box.submit()
    status = wait_for(browser, lambda d: css(d, "#search-status.error"), "the search error")[0]
    assert "Search failed" in status.text and "99999" in status.text
    assert not css(browser, "#search-results tbody tr")
    assert not [e for e in browser.get_log("browser") if e.get("source") == "javascript"]


def test_page_without_token_says_so(api, browser):
    browser.get(api)
    browser.execute_script("sessionStorage.clear()")
    browser.get(api)
    banner = wait_for(browser, lambda d: [e for e in css(d, "#error") if e.is_displayed()], "the error banner")[0]
    assert "token" in banner.text.lower()
    wait_for(browser, lambda d: css(d, "#traffic-chart[data-error='1']"), "the chart's error")
    assert browser.find_element("id", "auth").is_displayed()
