"""The notify writer in a real collector: blocklist events from a replayed capture -> signed webhooks
to a real HTTP receiver (failures retried, a SIGKILL survived) and e-mail digests through a real SMTP
server (aiosmtpd) on loopback, one per window and within the rate limit; config errors exit 2."""
import json
import sqlite3
import subprocess
import sys
import time

import pytest
from tests.support import collector as col
from tests.support import trafficgen as gen
from tests.support.attacks import syn
from tests.support.receivers import SECRET, SmtpReceiver, WebhookReceiver, unused_tcp_port, write_secret
from tests.support.services import wait_until

pytest.importorskip("aiosmtpd")

# A blocklist window of 1 s: each listed address the capture touches is one event at the next poll.
DETECT = {"detectors": {"blocklist": {"window": 1, "lists": [{"name": "testlist", "cidrs": ["100.64.77.0/24"],
                                                                 "category": "Intrusion.Botnet"}]}}}


def capture(tmp_path, name, hosts):
    """A capture of one SYN from 10.0.0.5 to each 100.64.77.<host> (one blocklist event each)."""
    t0 = time.time() - 60
    pcap = tmp_path / name
    gen.write_pcap(pcap, [syn(t0 + i * 0.01, "10.0.0.5", "100.64.77.%d" % h, 30000 + i, 443)
                          for i, h in enumerate(hosts)])
    return pcap


def notify_writer(tmp_path, **conf):
    return {"type": "notify", "state": str(tmp_path / "notify.db"), "poll": 0.2, **conf}


def webhook(url, tmp_path, **extra):
    return {"url": url, "secret_file": str(write_secret(tmp_path / "webhook.secret")), "backoff_min": 0.2,
            "backoff_max": 0.5, "timeout": 5, **extra}


def collector(tmp_path, writers):
    return col.Collector(tmp_path / "c", writers, detect=DETECT, node_name="org.example.test",
                         enrich={"local_networks": ["10.0.0.0/8"]})


def stored_events(db):
    conn = sqlite3.connect(str(db))
    try:
        return {json.loads(r[0])["ID"]: json.loads(r[0]) for r in conn.execute("SELECT event FROM events")}
    except sqlite3.OperationalError:
        return {}
    finally:
        conn.close()


def state_rows(path, sql):
    conn = sqlite3.connect(str(path))
    try:
        return conn.execute(sql).fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()


def check_deliveries(rx, events):
    """Every event delivered under its idempotency key, signed, its body the event; duplicates identical."""
    by_key = {}
    for r in rx.delivered():
        assert r["valid"], r["headers"]
        assert r["headers"]["Content-Type"] == "application/json" and r["path"] == "/hooks/myason"
        by_key.setdefault(r["headers"]["Idempotency-Key"], set()).add(r["body"])
    assert set(by_key) == {"botnet:%s" % i for i in events}
    for key, bodies in by_key.items():
        assert len(bodies) == 1
        assert json.loads(next(iter(bodies))) == events[key.split(":", 1)[1]]


def test_webhooks_signed_retried_and_delivered(tmp_path):
    db = tmp_path / "flows.db"
    with WebhookReceiver(fail_first=2) as rx:
        writers = [{"type": "sqlite", "path": str(db)},
                   notify_writer(tmp_path, webhooks={"soc": webhook(rx.url, tmp_path)},
                                 rules=[{"name": "botnet", "category": ["Intrusion"], "webhooks": ["soc"]},
                                        {"name": "scans", "category": ["Recon"], "webhooks": ["soc"]}])]
        with collector(tmp_path, writers) as c:
            col.run_agent(c.agent_conf(), [capture(tmp_path, "a.pcap", range(1, 6))])
            events = wait_until(lambda: len(stored_events(db)) == 5 and stored_events(db), timeout=30)
            wait_until(lambda: len(rx.delivered()) >= 5, timeout=30)
            assert c.stop() == 0
    check_deliveries(rx, events)
    statuses = [r["status"] for r in rx.requests]
    assert statuses[:3] == [500, 500, 200] and statuses.count(500) == 2
    # The retries waited for their backoff (0.2 s, then 0.4 s).
    times = [r["time"] for r in rx.requests]
    assert times[1] - times[0] >= 0.19 and times[2] - times[1] >= 0.39
    counters = dict(state_rows(tmp_path / "notify.db", "SELECT name, value FROM counters"))
    assert counters == {"webhook_failed_attempts": 2, "webhook_delivered": 5}
    assert state_rows(tmp_path / "notify.db", "SELECT count(*) FROM deliveries") == [(0,)]


def test_pending_deliveries_survive_sigkill(tmp_path):
    db = tmp_path / "flows.db"
    port = unused_tcp_port()
    url = "http://127.0.0.1:%d/hooks/myason" % port
    writers = [{"type": "sqlite", "path": str(db)},
               notify_writer(tmp_path, webhooks={"soc": webhook(url, tmp_path)},
                             rules=[{"name": "botnet", "category": ["Intrusion.Botnet"], "webhooks": ["soc"]}])]
    c = collector(tmp_path, writers).start()
    try:
        col.run_agent(c.agent_conf(), [capture(tmp_path, "a.pcap", range(10, 14))])
        # The receiver is down (connection refused): the four deliveries wait, tried and failing.
        wait_until(lambda: state_rows(tmp_path / "notify.db", "SELECT count(*) FROM deliveries WHERE attempts >= 1")
                   and state_rows(tmp_path / "notify.db", "SELECT count(*) FROM deliveries")[0][0] == 4
                   and state_rows(tmp_path / "notify.db", "SELECT max(attempts) FROM deliveries")[0][0] >= 2,
                   timeout=30)
    finally:
        c.proc.kill()
        c.proc.wait(30)
        c.proc = None
    events = stored_events(db)
    assert len(events) == 4
    with WebhookReceiver(port=port) as rx:
        with collector(tmp_path, writers) as c:
            wait_until(lambda: len({r["headers"]["Idempotency-Key"] for r in rx.delivered()}) == 4, timeout=30)
            assert c.stop() == 0
    check_deliveries(rx, events)
    assert state_rows(tmp_path / "notify.db", "SELECT count(*) FROM deliveries") == [(0,)]


def test_mail_digests_one_per_window_within_the_rate_limit(tmp_path):
    with SmtpReceiver() as smtp:
        writers = [notify_writer(tmp_path, mail={"host": "127.0.0.1", "port": smtp.port, "sender": "myason@example.org"},
                                 rules=[{"name": "botnet", "category": ["Intrusion"],
                                         "mail": {"to": ["soc@example.org", "noc@example.org"], "window": 1.5,
                                                  "max_mails": 1, "per": 5}}])]
        with collector(tmp_path, writers) as c:
            col.run_agent(c.agent_conf(), [capture(tmp_path, "a.pcap", [21, 22, 23])])
            wait_until(lambda: smtp.mails, timeout=30)
            first_sent = time.time()
            col.run_agent(c.agent_conf(), [capture(tmp_path, "b.pcap", [31, 32])])
            # The second window closes 1.5 s after its first event; the rate limit holds it back.
            wait_until(lambda: dict(state_rows(tmp_path / "notify.db", "SELECT name, value FROM counters")
                                    ).get("mail_rate_limited"), timeout=30)
            assert len(smtp.mails) == 1
            wait_until(lambda: len(smtp.mails) == 2, timeout=30)
            second_sent = time.time()
            assert c.stop() == 0
    mails = smtp.mails
    assert len(mails) == 2 and second_sent - first_sent >= 4
    for mail in mails:
        assert mail["to"] == ["soc@example.org", "noc@example.org"] and mail["from"] == "myason@example.org"
        assert str(mail["message"]["Subject"]).strip().startswith("[myason] botnet: ")
    listed = [sorted(line.split()[3] for line in m["body"].splitlines() if "Intrusion.Botnet" in line) for m in mails]
    assert listed == [["100.64.77.21", "100.64.77.22", "100.64.77.23"], ["100.64.77.31", "100.64.77.32"]], mails
    assert "held this digest back 1 time" in mails[1]["body"]
    assert dict(state_rows(tmp_path / "notify.db", "SELECT name, value FROM counters")) == {
        "mail_sent": 2, "mail_events": 5, "mail_rate_limited": 1}


@pytest.mark.parametrize("change, key", [
    ({"retries": 3}, "notify.webhooks.soc.retries"),
    ({"url": "htp://127.0.0.1/hook"}, "notify.webhooks.soc.url"),
    ({"secret_file": "/nonexistent/webhook.secret"}, "notify.webhooks.soc.secret_file"),
])
def test_config_errors_exit_2_naming_the_key(tmp_path, change, key):
    hook = dict(webhook("http://127.0.0.1:9/hook", tmp_path), **change)
    c = collector(tmp_path, [notify_writer(tmp_path, webhooks={"soc": hook},
                                           rules=[{"name": "r", "webhooks": ["soc"]}])])
    proc = subprocess.run([sys.executable, str(col.ROOT / "myason.py"), "collector", "-cc", str(c.dir / "collector.yaml")],
                          cwd=str(col.ROOT), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "config error: %s:" % key in proc.stderr
    assert SECRET.decode() not in proc.stderr
