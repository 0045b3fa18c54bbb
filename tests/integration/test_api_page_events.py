"""The web page's analyst views in a real headless Chromium against a real `myason api`: event search
(filters, paging by cursor), one event as its IDEA document and its flows, the agent selector over
every panel, UTC or local time, the greylist (table and CSV), the `#q=` deep link, a search
answered 202 (polled through /status and read from /result) and one whose result expired.

The store is SQLite, written by the real SqliteWriter: flows of two agents (probes), scans among
them (one seen by both), and the IDEA events the real detectors (myason.detect) of one collector
raise over those flows, each naming the agents of its flows (`_Myason.Agents`), plus one hand-made
event with markup in its text. The agent selector filters the events by probe. One API process
and one browser serve the whole module; the screenshots page-events-1400.png and
page-events-420.png are left in its pytest tmp dir and in test-artifacts/ (or
$MYASON_TEST_ARTIFACTS), kept after the run.
"""
import calendar
import json
import time
import urllib.parse
import uuid

import pytest

from myason.detect import build_detectors
from myason.schema import INDEX
from tests.support.api import row
from tests.support.browser import (TOKEN, api_json, api_text, css, full_screenshot, headless_chromium, page_errors,
                                   serve, set_viewport, wait_for)

AGENT1, AGENT2 = "edge-1", "edge-2"       # probe ids: never an IDEA Node name (that has no hyphen)
NODE = "org.example.collector"             # the collector's node_name, the events' Node
SCANNERS = {"10.66.0.%d" % i: AGENT1 if i <= 20 else AGENT2 for i in range(1, 29)}
SHARED_SCANNER = "10.66.0.30"              # its probes pass both probes, half each
BOTNET = "100.64.77.7"
MARKUP = '<img src=x id=injected onerror="document.title=\'pwned\'"><b>bold</b>'


def _scan(src, agents, t0):
    """60 one-packet SYN flows from src to 192.0.2.1-60 on tcp/22: a horizontal scan, the j-th metered by
    agents[j % len(agents)]."""
    out = []
    for j in range(60):
        agent = agents[j % len(agents)]
        r = row(src, "192.0.2.%d" % (j + 1), 50000 + j, 22, 6, 60, t0 + j * 0.1, agent=agent,
                if_name="eth0" if agent == AGENT1 else "eth1")
        r[INDEX["packets"]], r[INDEX["tcp_flags"]] = 1, 0x02
        out.append(r)
    return out


def _detected(batches):
    """The events of one collector's real detectors over the agents' flows."""
    events = []
    dets = build_detectors({"node_name": NODE, "detectors": {"blocklist": {"lists": [
        {"name": "testlist", "cidrs": ["100.64.77.0/24"], "category": "Intrusion.Botnet"}]}}})
    for rows in batches:
        dets.feed_rows(rows)
        events += dets.flush(max(r[INDEX["last"]] for r in rows) + 5)
    return events


def agents_of(event):
    return event.get("_Myason", {}).get("Agents", [])


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """The store: (path, rows, events)."""
    from myason.store.sqlite import SqliteWriter
    now = time.time()
    by_agent = {AGENT1: [], AGENT2: []}
    for i, (src, agent) in enumerate(SCANNERS.items()):
        by_agent[agent].append(_scan(src, [agent], now - 3300 + i * 100))
    by_agent[AGENT1].append(_scan(SHARED_SCANNER, [AGENT1, AGENT2], now - 400))
    busy1 = [row("10.1.0.1", "198.51.100.1", 41000 + i, 443, 6, 900000, now - 1800 + i, agent=AGENT1) for i in range(5)]
    busy2 = [row("10.2.0.1", "198.51.100.2", 42000 + i, 443, 6, 700000, now - 1700 + i, agent=AGENT2, if_name="eth1")
             for i in range(5)]
    botnet = [row("10.0.0.5", BOTNET, 45000, 443, 6, 3000, now - 600, agent=AGENT2, if_name="eth1")]
    by_agent[AGENT1].append(busy1)
    by_agent[AGENT2] += [busy2, botnet]
    events = _detected([b for batches in by_agent.values() for b in batches])
    assert len(events) == len(SCANNERS) + 2, [e["Category"] for e in events]
    assert sorted(map(tuple, map(agents_of, events))).count((AGENT1, AGENT2)) == 1
    crafted = {"Format": "IDEA0", "ID": str(uuid.uuid4()),
               "DetectTime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now - 120)),
               "Category": ["Other"], "Description": MARKUP, "Note": "</pre><script>document.title='pwned'</script>",
               "Source": [{"IP4": ["10.1.0.1"]}], "Node": [{"Name": NODE}]}
    rows = [r for batches in by_agent.values() for b in batches for r in b]
    path = tmp_path_factory.mktemp("page-events") / "flows.db"
    w = SqliteWriter(path=str(path))
    w.open()
    try:
        assert w.write("page-events-1", rows, events=events + [crafted])
        w.maintain(now=time.time())
    finally:
        w.close()
    return path, rows, events + [crafted]


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    return tmp_path_factory.mktemp("page-events-shots")


@pytest.fixture(scope="module")
def api(data, shots):
    with serve(data[0], shots) as base:
        yield base


@pytest.fixture(scope="module")
def browser(shots):
    with headless_chromium(shots) as driver:
        driver.execute_cdp_cmd("Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(shots)})
        yield driver


def open_page(driver, api, fragment="", utc=True):
    """The page afresh (new document), with the token, times in UTC unless told, all agents."""
    driver.get("about:blank")
    driver.get(api + "static/style.css")
    driver.execute_script("sessionStorage.clear(); localStorage.setItem('myason.tz', arguments[0]);",
                          "utc" if utc else "local")
    driver.get(api + "#token=" + TOKEN + fragment)
    wait_for(driver, lambda d: css(d, "#events[data-loaded='1']"), "the events")


def event_ids(driver):
    return [tr.get_attribute("data-id") for tr in css(driver, "#events tbody tr")]


def api_event_ids(api, query):
    body = api_json(api, "events?" + query)
    return [e["id"] for e in body["events"]], body.get("next")


def search_rows(driver):
    heads = [th.get_attribute("data-col") for th in css(driver, "#search-results thead th")]
    return [dict(zip(heads, (td.text for td in tr.find_elements("css selector", "td"))))
            for tr in css(driver, "#search-results tbody tr")]


def fill(driver, ident, text):
    box = driver.find_element("id", ident)
    box.clear()
    if text:
        box.send_keys(text)


def wait_page(driver, page, what):
    return wait_for(driver, lambda d: css(d, "#events[data-loaded='1'][data-page='%d']" % page), what)


def test_event_search_pages_and_filters(api, browser, data):
    open_page(browser, api)
    newest, cursor = api_event_ids(api, "limit=25&since=1h")
    assert len(newest) == 25 and cursor
    wait_for(browser, lambda d: event_ids(d) == newest, "the newest 25 events")
    browser.find_element("id", "ev-older").click()
    wait_page(browser, 2, "page 2")
    older = event_ids(browser)
    assert older == api_event_ids(api, "limit=25&since=1h&cursor=" + urllib.parse.quote(cursor))[0]
    assert set(newest) | set(older) == {e["ID"] for e in data[2]} and not set(newest) & set(older)
    assert browser.find_element("id", "ev-older").get_attribute("disabled")
    browser.find_element("id", "ev-newer").click()
    wait_page(browser, 1, "page 1 again")
    assert event_ids(browser) == newest

    def search(**fields):
        for name in ("category", "source", "target", "from", "to"):
            fill(browser, "ev-" + name, fields.get(name, ""))
        # Marked loaded again once the answer is shown.
        browser.execute_script("delete document.getElementById('events').dataset.loaded")
        browser.find_element("id", "ev-search").click()
        return wait_for(browser, lambda d: css(d, "#events[data-loaded='1'][data-page='1']") and event_ids(d),
                        "events of %s" % fields)

    def api_ids(**params):
        return api_event_ids(api, urllib.parse.urlencode({"limit": 25, **params}))[0]

    by_category = search(category="Intrusion.Botnet")
    assert by_category == api_ids(category="Intrusion.Botnet", since="1h") and len(by_category) == 1
    by_source = search(source="10.66.0.0/28")
    assert len(by_source) == 15 and by_source == api_ids(source="10.66.0.0/28", since="1h")
    assert search(target="10.0.0.0/24") == by_category     # the blocklisted peer is the source
    # A time range typed in the zone shown (UTC): the events detected within it.
    times = sorted(calendar.timegm(time.strptime(e["DetectTime"][:19], "%Y-%m-%dT%H:%M:%S")) for e in data[2])
    lo, hi = times[3], times[8]
    fmt = lambda t: time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t))  # noqa: E731
    ranged = search(**{"from": fmt(lo), "to": fmt(hi)})
    assert ranged == api_ids(start=int(lo), end=int(hi)) and len(ranged) >= 5
    search()
    assert not page_errors(browser)


def test_event_view_is_text_and_links_to_its_flows(api, browser, data):
    _, rows, events = data
    open_page(browser, api)
    crafted = events[-1]
    wait_for(browser, lambda d: crafted["ID"] in event_ids(d), "the crafted event")
    css(browser, "#events tr[data-id='%s'] a.event-open" % crafted["ID"])[0].click()
    idea = wait_for(browser, lambda d: css(d, "#event-idea[data-loaded='1'][data-id='%s']" % crafted["ID"]),
                    "the crafted event's IDEA")[0]
    # The document as text: the markup in it is shown, never run nor parsed.
    assert json.loads(idea.text) == api_json(api, "events/" + crafted["ID"])["idea"] == crafted
    assert json.dumps(MARKUP) in idea.text and not css(browser, "#injected, #event-idea *, #events b")
    assert browser.title != "pwned"

    scan = next(e for e in events if e["Source"][0]["IP4"] == ["10.66.0.27"])
    css(browser, "#events tr[data-id='%s'] a.event-open" % scan["ID"])[0].click()
    wait_for(browser, lambda d: css(d, "#event-idea[data-loaded='1'][data-id='%s']" % scan["ID"]), "the scan's IDEA")
    link = wait_for(browser, lambda d: css(d, "#event-flows-link"), "the link to its flows")[0]
    flows = api_json(api, "events/" + scan["ID"])["flows"]
    assert link.get_attribute("href").endswith(flows["page"].lstrip("/")) and "#q=" in link.get_attribute("href")
    link.click()
    wait_for(browser, lambda d: css(d, "#search-results[data-loaded='1'] tbody tr"), "the event's flows")
    shown = {(r["src_ip"], r["dst_ip"], r["src_port"], r["dst_port"]) for r in search_rows(browser)}
    expected = {(r[INDEX["src_ip"]], r[INDEX["dst_ip"]], str(r[INDEX["src_port"]]), str(r[INDEX["dst_port"]]))
                for r in rows if r[INDEX["src_ip"]] == "10.66.0.27"}
    assert shown == expected and len(expected) == 60
    assert "#q=" in browser.current_url and "token=" not in browser.current_url
    assert not page_errors(browser)


def test_agent_selector_applies_to_every_panel(api, browser, data):
    _, rows, events = data
    open_page(browser, api, "&agent=" + AGENT2)
    from selenium.webdriver.support.ui import Select
    select = Select(wait_for(browser, lambda d: css(d, "#agent[data-loaded='1']"), "the agent list")[0])
    assert [o.get_attribute("value") for o in select.options] == ["", AGENT1, AGENT2] or \
        [o.get_attribute("value") for o in select.options] == ["", AGENT2, AGENT1]
    assert select.first_selected_option.get_attribute("value") == AGENT2
    addresses2 = {r[INDEX[c]] for r in rows if r[INDEX["agent"]] == AGENT2 for c in ("src_ip", "dst_ip")}

    def talkers():
        return [tr.find_elements("css selector", "td")[1].text
                for tr in css(browser, "#top-talkers[data-loaded='1'] tbody tr")]

    def shown(agent, top_ok, events_ok):
        """Wait until every panel shows `agent`'s data (all agents: '')."""
        n = sum(1 for r in rows if not agent or r[INDEX["agent"]] == agent)
        wait_for(browser, lambda d: css(d, "#traffic-chart[data-loaded='1'][data-flows='%d']" % n),
                 "the traffic of %s" % (agent or "all agents"))
        wait_for(browser, lambda d: (lambda t: t and top_ok(t))(talkers()), "the top talkers of %s" % agent)
        wait_for(browser, lambda d: css(d, "#events[data-loaded='1']") and events_ok(event_ids(d)),
                 "the events of %s" % agent)

    def events_of(agent):
        return {e["ID"] for e in events if agent in agents_of(e)}

    shown(AGENT2, lambda t: set(t) <= addresses2, lambda ids: set(ids) == events_of(AGENT2))
    # Each row names the agents of its event: AGENT2 alone, or both for the shared scan.
    want = {e["ID"]: ", ".join(agents_of(e)) for e in events if e["ID"] in events_of(AGENT2)}
    assert sorted(set(want.values())) == [AGENT1 + ", " + AGENT2, AGENT2]
    wait_for(browser, lambda d: {tr.get_attribute("data-id"): tr.find_element("css selector", "td.agents").text
                                 for tr in css(d, "#events tbody tr")} == want, "the agents of each event")
    # The other probe, chosen in the selector: its events (the shared scan among them), no longer AGENT2's.
    select.select_by_value(AGENT1)
    shown(AGENT1, lambda t: "10.1.0.1" in t, lambda ids: set(ids) == events_of(AGENT1))
    assert len(events_of(AGENT1)) == 21 and events_of(AGENT1) & events_of(AGENT2)
    select.select_by_value(AGENT2)
    shown(AGENT2, lambda t: set(t) <= addresses2, lambda ids: set(ids) == events_of(AGENT2))
    box = browser.find_element("id", "search-input")
    box.send_keys("port/443/after/1h")
    box.submit()
    wait_for(browser, lambda d: css(d, "#search-results[data-loaded='1'] tbody tr"), "the search")
    found = search_rows(browser)
    assert {r["agent"] for r in found} == {AGENT2}
    assert "agent/" + AGENT2 in browser.find_element("id", "search-status").text

    select.select_by_value("")
    # The busiest address is edge1's; the newest page holds both agents' events.
    shown("", lambda t: t[0] == "10.1.0.1", lambda ids: len(ids) == 25)
    wait_for(browser, lambda d: {r.get("agent") for r in search_rows(d)} == {AGENT1, AGENT2}, "the search of both")
    assert not page_errors(browser)


def test_times_in_utc_or_local(api, browser, data):
    events = data[2]
    browser.execute_cdp_cmd("Emulation.setTimezoneOverride", {"timezoneId": "Asia/Kolkata"})
    try:
        open_page(browser, api)
        newest = max(events, key=lambda e: (e["DetectTime"], e["ID"]))
        t = calendar.timegm(time.strptime(newest["DetectTime"][:19], "%Y-%m-%dT%H:%M:%S"))

        def first_time():
            return css(browser, "#events tr[data-id='%s'] td.time" % newest["ID"])[0].text

        zone = browser.find_element("id", "tz")
        assert zone.text == "UTC"
        assert first_time() == time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t))
        assert "time (UTC)" in browser.find_element("id", "events").text
        zone.click()
        wait_for(browser, lambda d: d.find_element("id", "tz").text == "local (UTC+05:30)", "the local zone")
        local = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t + 5.5 * 3600))
        wait_for(browser, lambda d: first_time() == local, "the time in local time")
        # Kept for the next visit.
        browser.refresh()
        wait_for(browser, lambda d: css(d, "#events[data-loaded='1']"), "the events again")
        assert browser.find_element("id", "tz").text == "local (UTC+05:30)" and first_time() == local
        browser.find_element("id", "tz").click()
        wait_for(browser, lambda d: d.find_element("id", "tz").text == "UTC", "UTC again")
    finally:
        browser.execute_cdp_cmd("Emulation.setTimezoneOverride", {"timezoneId": "UTC"})
    assert not page_errors(browser)


def test_greylist_table_and_csv(api, browser, shots):
    open_page(browser, api)
    listed = api_json(api, "greylist?since=1h")["rows"]
    trs = wait_for(browser, lambda d: css(d, "#greylist[data-loaded='1'] tbody tr"), "the greylist")
    assert [tr.find_elements("css selector", "td")[0].text for tr in trs] == [r["address"] for r in listed]
    assert len(listed) == len(SCANNERS) + 3     # the scanners, the shared one, 10.1.0.1 (crafted), the bot
    target = shots / "greylist.csv"
    target.unlink(missing_ok=True)
    browser.find_element("id", "greylist-csv").click()
    wait_for(browser, lambda d: target.exists() and target.stat().st_size > 0, "the downloaded CSV")
    assert target.read_text() == api_text(api, "greylist.csv?since=1h")
    assert "greylist.csv saved" in browser.find_element("id", "greylist-status").text
    assert not page_errors(browser)


def test_deep_link_runs_a_search_answered_later(api, browser, data):
    """`#q=` runs the search on load; with wait=0 the API answers 202 and the page polls for it."""
    rows = data[1]
    clauses = "host/10.66.0.25/port/22"
    open_page(browser, api, "&wait=0&q=" + urllib.parse.quote(clauses, safe=""))
    wait_for(browser, lambda d: css(d, "#search-results[data-loaded='1'] tbody tr"), "the deep link's search")
    status = browser.find_element("id", "search-status")
    seen = status.get_attribute("data-seen").split()
    assert seen[0] == "sent" and seen[-1] == "done" and {"queued", "running"} & set(seen), seen
    assert len(status.get_attribute("data-id")) == 16
    answer = api_json(api, "q/" + clauses)
    assert len(search_rows(browser)) == answer["count"] == sum(1 for r in rows if r[INDEX["src_ip"]] == "10.66.0.25")
    # No after/ nor before/: the default bound the API applied is stated.
    assert answer["bound"] in status.text
    assert not page_errors(browser)


def test_an_expired_search_is_shown_as_an_error(data, browser, shots):
    """A result gone before it is read (result_ttl passed) is an error on the page, not an empty list."""
    where = shots / "expiring"
    where.mkdir(exist_ok=True)
    with serve(data[0], where, "result_ttl: 0.001\n") as short_lived:
        open_page(browser, short_lived, "&wait=0&q=" + urllib.parse.quote("host/10.66.0.26/port/22", safe=""))
        status = wait_for(browser, lambda d: css(d, "#search-status.error[data-state='expired']"), "the error")[0]
        assert "expired" in status.text and "Search failed" in status.text
        assert "running" in status.get_attribute("data-seen") or "queued" in status.get_attribute("data-seen")
        assert not css(browser, "#search-results tbody tr")
    assert not page_errors(browser)


LAYOUT_JS = r"""
return {page: document.documentElement.scrollWidth, viewport: window.innerWidth,
  cards: [...document.querySelectorAll('.card')].filter((c) => c.offsetParent && c.scrollWidth > c.clientWidth)
    .map((c) => c.querySelector('h2').textContent)};
"""


def test_layout_at_1400_and_420(api, browser, data, shots):
    scan = next(e for e in data[2] if e["Source"][0]["IP4"] == ["10.66.0.27"])
    for width in (1400, 420):
        set_viewport(browser, width)
        open_page(browser, api, "&q=" + urllib.parse.quote("host/10.66.0.1/after/1h", safe=""))
        wait_for(browser, lambda d: css(d, "#greylist[data-loaded='1'] tbody tr"), "the greylist")
        wait_for(browser, lambda d: css(d, "#search-results[data-loaded='1'] tbody tr"), "the search")
        css(browser, "#events tr[data-id='%s'] a.event-open" % scan["ID"])[0].click()
        wait_for(browser, lambda d: css(d, "#event-idea[data-loaded='1']"), "the IDEA view")
        m = browser.execute_script(LAYOUT_JS)
        shot = full_screenshot(browser, shots / ("page-events-%d.png" % width))
        where = "at %d px (screenshot %s): %s" % (width, shot, m)
        assert m["viewport"] == width and m["page"] <= width, "the page scrolls sideways " + where
        assert not m["cards"], "content sticks out of its card " + where
    set_viewport(browser, 1280)
    assert not page_errors(browser)
