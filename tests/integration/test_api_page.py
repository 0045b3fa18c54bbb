"""The built-in web page in a real headless Chromium against a real `myason api` over real flows.

The store is SQLite, filled through the real SqliteWriter with the agent's records of
data/demo.pcap (shifted by the agent's --time-shift to end 90 s ago, or with the capture's own
2024 times) and one crafted IDEA event; rollup maintenance then runs as the writer's
housekeeping would. The page is driven with Selenium (Debian's chromium and chromium-driver);
the test skips only when those cannot be installed. The layout test leaves screenshots
(page-1400.png, page-420.png) in its pytest tmp dir and in test-artifacts/ (or
$MYASON_TEST_ARTIFACTS), kept after the run.
"""
import csv
import subprocess
import time
import uuid

import pytest

from myason.schema import FIELDS
from tests.support.browser import (MYASON, ROOT, TOKEN, api_json, css, full_screenshot, headless_chromium,
                                   page_errors, serve, set_viewport, wait_for)
from tests.support.rollups import ref_service_port

EVENT_DESCRIPTION = "Horizontal scan: 10.66.0.1 probed 64 hosts on port 22"
_INT_FIELDS = {f for f in FIELDS if f not in ("src_ip", "dst_ip", "agent", "if_name", "next_hop", "end_reason",
                                                "first", "last")}


def _records(tmp_path, retime=True):
    """The agent's records of data/demo.pcap as collector rows: shifted (the agent's --time-shift)
    to end 90 s ago, or with the capture's own times (2024-01-01 00:00:00 to 00:06:30 UTC)."""
    from myason.agent.pcapfile import open_capture
    pcap = ROOT / "data" / "demo.pcap"
    shift = []
    if retime:
        with open_capture(str(pcap)) as cap:
            shift = ["--time-shift", "%.6f" % (time.time() - 90 - cap.newest_timestamp())]
    out = tmp_path / ("flows.csv" if retime else "past-flows.csv")
    subprocess.run(MYASON + ["agent", "--read", str(pcap), *shift, "--no-export", "--no-progress", "-q",
                             "--output", str(out)], check=True, cwd=str(ROOT), timeout=120)
    rows = []
    with open(out, newline="") as fh:
        for rec in csv.DictReader(fh):
            row = [float(rec[f]) if f in ("first", "last") else int(rec[f]) if f in _INT_FIELDS else rec[f]
                   for f in FIELDS]
            rows.append(row + [time.time(), "127.0.0.1"])
    assert rows
    return rows


def _event(detect_time=None):
    detect_time = time.time() - 60 if detect_time is None else detect_time
    return {"Format": "IDEA0", "ID": str(uuid.uuid4()),
            "DetectTime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(detect_time)),
            "Category": ["Recon.Scanning"], "Description": EVENT_DESCRIPTION,
            "Source": [{"IP4": ["10.66.0.1"], "Proto": ["tcp"]}],
            "Target": [{"IP4": ["192.0.2.%d" % i for i in range(1, 65)], "Port": [22], "Proto": ["tcp"]}],
            "Node": [{"Name": "org.example.myason", "SW": ["myason"]}]}


def _fill(path, rows, event):
    from myason.store import rollup_maintain
    from myason.store.sqlite import SqliteWriter
    writer = SqliteWriter(path=str(path))
    writer.open()
    try:
        assert writer.write("page-test-1", rows, events=[event])
        rollup_maintain.maintain(writer)
    finally:
        writer.close()


@pytest.fixture
def store(tmp_path):
    """A SQLite store with the demo flows, one event and up-to-date rollups; yields (path, rows)."""
    rows = _records(tmp_path)
    path = tmp_path / "flows.db"
    _fill(path, rows, _event())
    return path, rows


PAST_EVENT_TIME = 1704067500.0      # 2024-01-01 00:05:00 UTC, inside the capture


@pytest.fixture
def past_store(tmp_path):
    """A SQLite store holding only the capture's own 2024 flows (a replayed capture); yields (path, rows)."""
    rows = _records(tmp_path, retime=False)
    path = tmp_path / "past.db"
    _fill(path, rows, _event(PAST_EVENT_TIME))
    return path, rows


@pytest.fixture
def api(store, tmp_path):
    """A real `myason api` process over the store; yields its base address."""
    with serve(store[0], tmp_path) as base:
        yield base


@pytest.fixture
def past_api(past_store, tmp_path):
    """A real `myason api` process over the store of 2024 flows; yields its base address."""
    with serve(past_store[0], tmp_path) as base:
        yield base


@pytest.fixture
def browser(tmp_path):
    """A headless Chromium; a screenshot of its last page is left in tmp_path."""
    with headless_chromium(tmp_path) as driver:
        yield driver


def service_port_ranking(rows):
    """Service ports (docs/api.md) of the rows by bytes, most first, ties by key as text."""
    by = {}
    for r in rows:
        port = ref_service_port(r[FIELDS.index("proto")], r[FIELDS.index("src_port")], r[FIELDS.index("dst_port")])
        if port is not None:
            by[str(port)] = by.get(str(port), 0) + r[FIELDS.index("bytes")]
    return sorted(by, key=lambda k: (-by[k], k))


def talker_ranking(rows):
    by = {}
    for r in rows:
        for addr in (r[FIELDS.index("src_ip")], r[FIELDS.index("dst_ip")]):
            by[addr] = by.get(addr, 0) + r[FIELDS.index("bytes")]
    return sorted(by, key=lambda k: (-by[k], k))


# What the layout checks measure, in the page. An address is on one line when its text has line
# boxes at one height only; a flow column is named by its heading's data-col.
LAYOUT_JS = r"""
const heads = [...document.querySelectorAll('#search-results thead th')].map((th) => th.dataset.col || th.textContent);
const lines = (node) => {
  const range = document.createRange();
  range.selectNodeContents(node);
  return new Set([...range.getClientRects()].filter((r) => r.width > 0).map((r) => Math.round(r.top))).size;
};
const chart = document.querySelector('#traffic-chart svg').getBoundingClientRect();
const box = document.querySelector('#search-results table').parentElement;
const flowAddresses = [...document.querySelectorAll('#search-results tbody tr')].flatMap((tr) =>
  [...tr.children].filter((td, i) => /_ip$/.test(heads[i])));
const others = [...document.querySelectorAll(
  '#top-talkers td:nth-child(2), #events td:nth-child(3), #events td:nth-child(4)')];
return {page: document.documentElement.scrollWidth, viewport: window.innerWidth, chart: [chart.left, chart.right],
  box: [box.scrollWidth, box.clientWidth], boxOverflow: getComputedStyle(box).overflowX, heads: heads,
  cards: [...document.querySelectorAll('.card')].filter((c) => c.scrollWidth > c.clientWidth)
    .map((c) => c.querySelector('h2').textContent),
  flowAddresses: flowAddresses.map((td) => [td.textContent, lines(td)]),
  otherAddresses: others.flatMap((td) => [...td.querySelectorAll('a, .addr')]).map((a) => [a.textContent, lines(a)])};
"""


def test_page_layout_at_1400_and_420(api, browser, tmp_path):
    query = "port/443/after/1h"
    # The API's answer: IPv4 and IPv6 flows, and the columns holding a value in some row (ASN 0 = unknown).
    answer = api_json(api, "q/" + query)
    assert any(":" in r[4] for r in answer["rows"]) and any("." in r[4] for r in answer["rows"])
    filled = [c for i, c in enumerate(answer["columns"])
              if any(r[i] not in (None, "") and not (c.endswith("_asn") and r[i] == 0) for r in answer["rows"])]
    assert len(filled) < len(answer["columns"])
    for width in (1400, 420):
        # Loaded afresh at that width, as a phone or a desktop would (not a mere change of the
        # address's fragment, which keeps the document).
        set_viewport(browser, width)
        browser.get("about:blank")
        browser.get(api + "#token=" + TOKEN)
        wait_for(browser, lambda d: css(d, "#traffic-chart[data-loaded='1'] svg"), "the traffic chart")
        wait_for(browser, lambda d: css(d, "#top-talkers[data-loaded='1'] tbody tr"), "top talkers")
        wait_for(browser, lambda d: css(d, "#events[data-loaded='1'] tbody tr"), "events")
        box = browser.find_element("id", "search-input")
        box.send_keys(query)
        box.submit()
        wait_for(browser, lambda d: css(d, "#search-results[data-loaded='1'] tbody tr"), "search results")
        m = browser.execute_script(LAYOUT_JS)
        shot = full_screenshot(browser, tmp_path / ("page-%d.png" % width))
        where = "at %d px (screenshot %s): %s" % (width, shot, {k: v for k, v in m.items() if "Addresses" not in k})
        assert m["viewport"] == width, where
        assert m["page"] <= m["viewport"], "the page scrolls sideways " + where
        assert 0 <= m["chart"][0] and m["chart"][1] <= m["viewport"], "the chart leaves the viewport " + where
        assert not m["cards"], "content sticks out of its card " + where
        wrapped = [a for a, n in m["flowAddresses"] + m["otherAddresses"] if n != 1]
        assert len(m["flowAddresses"]) == 2 * len(answer["rows"]) and not wrapped, \
            "addresses wrap %s: %s" % (where, wrapped)
        assert m["heads"] == filled, "empty columns shown " + where
        if width == 1400:
            assert m["box"][0] <= m["box"][1], "the table needs horizontal scrolling " + where
        else:
            # Too wide for a phone: the table's own box scrolls, not the page.
            assert m["box"][0] > m["box"][1] and m["boxOverflow"] in ("auto", "scroll"), where
    assert not page_errors(browser)


def test_page_offers_the_range_where_data_exists(past_api, browser, past_store):
    """A replayed capture keeps its 2024 times: the page says where the data is and goes there."""
    _, rows = past_store
    browser.execute_cdp_cmd("Emulation.setTimezoneOverride", {"timezoneId": "UTC"})
    browser.get(past_api + "#token=" + TOKEN)
    notice = wait_for(browser, lambda d: [e for e in css(d, "#range-notice") if e.is_displayed()],
                      "the range notice")[0]
    # The capture spans 00:00:00-00:06:30: its rollups cover the minutes 00:00 to 00:07.
    assert "no flows in the last 1h" in notice.text, notice.text
    assert "data exists from 2024-01-01 00:00 to 2024-01-01 00:07" in notice.text, notice.text
    assert api_json(past_api, "range") == {"first": "2024-01-01T00:00:00.000Z", "last": "2024-01-01T00:07:00.000Z"}
    notice.find_element("css selector", "button").click()

    chart = wait_for(browser, lambda d: css(d, "#traffic-chart[data-loaded='1'][data-flows]:not([data-flows='0'])"),
                     "the chart of the stored range")[0]
    assert int(chart.get_attribute("data-flows")) == len(rows)
    assert css(browser, "#traffic-chart svg g.col rect"), "no columns drawn"
    assert not [e for e in css(browser, "#range-notice") if e.is_displayed()]
    shown = wait_for(browser, lambda d: [e for e in css(d, "#range") if e.is_displayed()], "the range shown")[0]
    assert "2024-01-01 00:07" in shown.text, shown.text
    # The lists of that hour: the API's (sums of per-minute top-N lists, exact for the busy keys).
    talkers = wait_for(browser, lambda d: css(d, "#top-talkers[data-loaded='1'] tbody tr"), "top talkers")
    keys = [tr.find_elements("css selector", "td")[1].text for tr in talkers]
    listed = api_json(past_api, "top/talkers?limit=10&period=1h&end=2024-01-01T00:07:00Z")["rows"]
    assert keys == [r["key"] for r in listed]
    assert keys[0] == talker_ranking(rows)[0]
    ports = wait_for(browser, lambda d: css(d, "#top-ports[data-loaded='1'] tbody tr"), "top ports")
    assert [tr.find_elements("css selector", "td")[1].text.split()[0] for tr in ports] == \
        service_port_ranking(rows)[:len(ports)]
    events = wait_for(browser, lambda d: css(d, "#events[data-loaded='1'] tbody tr"), "events of the range")
    assert any(EVENT_DESCRIPTION in tr.text for tr in events)
    # A search from a top list asks for that range, not for the last hour.
    talkers[0].find_element("css selector", "a").click()
    wait_for(browser, lambda d: css(d, "#search-results[data-loaded='1'] tbody tr"), "the talker's flows")
    assert "after/2023-12-31T23:07:00Z" in browser.find_element("id", "search-input").get_attribute("value")

    # Back to now: the last hour is empty again, and the page says so again.
    shown.find_element("css selector", "button").click()
    wait_for(browser, lambda d: [e for e in css(d, "#range-notice") if e.is_displayed()], "the notice again")
    assert not [e for e in css(browser, "#range") if e.is_displayed()]
    assert not page_errors(browser)


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
    # Top ports rank service ports: the clients' ephemeral ports of the reply flows are not in it.
    ports = wait_for(browser, lambda d: css(d, "#top-ports[data-loaded='1'] tbody tr"), "top ports")
    keys = [tr.find_elements("css selector", "td")[1].text.split()[0] for tr in ports]
    assert keys == service_port_ranking(rows)[:len(keys)] and len(keys) >= 4

    events = wait_for(browser, lambda d: css(d, "#events[data-loaded='1'] tbody tr"), "events")
    assert any(EVENT_DESCRIPTION in tr.text and "10.66.0.1" in tr.text for tr in events)

    # A search typed in the box: every row is a flow of that host on that port.
    box = browser.find_element("id", "search-input")
    box.send_keys("host/192.0.2.80 port/443 after/1h")
    box.submit()
    results = wait_for(browser, lambda d: css(d, "#search-results[data-loaded='1'] tbody tr"), "search results")
    heads = [th.get_attribute("data-col") for th in css(browser, "#search-results thead th")]
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
    assert not page_errors(browser)


def test_page_without_token_says_so(api, browser):
    browser.get(api)
    browser.execute_script("sessionStorage.clear()")
    browser.get(api)
    banner = wait_for(browser, lambda d: [e for e in css(d, "#error") if e.is_displayed()], "the error banner")[0]
    assert "token" in banner.text.lower()
    wait_for(browser, lambda d: css(d, "#traffic-chart[data-error='1']"), "the chart's error")
    assert browser.find_element("id", "auth").is_displayed()
