"""False positives: all of ../shared/pcaps/real with default thresholds raise only a few events."""
import json
import sqlite3

import pytest

from tests.support import collector as col
from tests.support.oracle import SHARED
from tests.support.services import wait_until

REAL = SHARED / "pcaps" / "real"
# What the default thresholds find in the 1221 captures (docs/events.md, "False positives"):
EXPECTED = {
    ("Recon.Scanning", "172.16.0.8"),     # ndpi__synscan.pcap: a real SYN scan (true positive)
    ("Recon.Scanning", "10.0.2.15"),      # ndpi__gnutella.pcap: Gnutella peer probing, udp/6346
    ("Attempt.Login", "192.168.56.1"),    # zeek__ftp__bruteforce.pcap: an FTP brute force (true)
}


_count = col.sqlite_count


@pytest.mark.skipif(not REAL.is_dir(), reason="../shared/pcaps/real not available")
def test_real_captures_raise_few_events(tmp_path):
    pcaps = sorted(REAL.glob("*.pcap"))
    db = tmp_path / "flows.db"
    # Old captures: windows close on flow time, not on the wall clock.
    with col.Collector(tmp_path / "c", [{"type": "sqlite", "path": str(db)}], detect_clock="flow") as c:
        out = tmp_path / "agent.csv"
        col.run_agent(c.agent_conf(), pcaps, output=out, timeout=1200)
        with open(out) as fh:
            flows = sum(1 for _ in fh) - 1
        wait_until(lambda: _count(db) >= flows, timeout=120)
        assert c.stop() == 0
    conn = sqlite3.connect(str(db))
    events = [json.loads(r[0]) for r in conn.execute("SELECT event FROM events")]
    conn.close()
    got = {(e["Category"][0], (e["Source"][0].get("IP4") or e["Source"][0].get("IP6"))[0]) for e in events}
    assert len(events) == len(got) and got == EXPECTED, [e["Description"] for e in events]
