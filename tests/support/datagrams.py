"""Datagrams of two known agents for the collector's processor tests (the keystore knows both keys)."""
from cryptography.fernet import Fernet

from myason import wire
from myason.collector.keystore import Keystore
from myason.schema import FIELDS

NOW = 1_700_000_100.0
KEY = Fernet.generate_key()
LAB_KEY = Fernet.generate_key()
ADDR, LAB_ADDR = "203.0.113.5", "192.0.2.10"
IDX = {name: i for i, name in enumerate(FIELDS)}


def keystore():
    """A keystore with both agents; lab-7 may send from 192.0.2.0/24 only."""
    return Keystore({"edge-01": ([KEY], None), "lab-7": ([LAB_KEY], ["192.0.2.0/24"])})


def row(agent="edge-01", i=0, **changes):
    """A valid agent row (FIELDS order) numbered i, with the named fields changed."""
    r = ["10.0.%d.%d" % (i // 256 % 256, i % 256), "198.51.100.7", 40000 + i % 20000, 443, 6, 0,
         3, 180, NOW - 10.5, NOW - 1.25, 0x1B, agent, "eth0", 2, 3, 4, 0, "", 24, 16, 0, 15169, "fin"]
    for name, value in changes.items():
        r[IDX[name]] = value
    return r


def dgram(seq, sent=None, agent="edge-01", key=None, rows=None, stamp=NOW):
    """A valid datagram of `agent` (one row numbered seq by default), encrypted at `stamp`."""
    key = key or (LAB_KEY if agent == "lab-7" else KEY)
    rows = [row(agent, seq)] if rows is None else rows
    sent = NOW - 2 + seq * 1e-3 if sent is None else sent
    return wire.encode_datagram(rows, agent, seq, Fernet(key), sent=sent, now=stamp)
