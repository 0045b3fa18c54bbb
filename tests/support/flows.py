"""Crafted flow rows and IDEA checks shared by the detector tests and the event integration tests."""
import re
import uuid

import orjson

from myason.schema import ROW_FIELDS

T0 = 1_700_000_000.0
SYN, ACK, FIN, RST, PSH = 0x02, 0x10, 0x01, 0x04, 0x08
DONE = SYN | ACK | PSH | FIN          # a completed TCP conversation, client side
_TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
TIME_ORDER = ("WinStartTime", "EventTime", "CeaseTime", "WinEndTime", "DetectTime")


def flow(src, dst, sport=40000, dport=80, proto=6, packets=1, nbytes=None, first=T0, dur=0.0,
         flags=SYN, agent="a1"):
    """A collector row (ROW_FIELDS order) with the given 5-tuple, counts and times."""
    values = dict(
        src_ip=src, dst_ip=dst, src_port=sport, dst_port=dport, proto=proto, tos=0,
        packets=packets, bytes=60 * packets if nbytes is None else nbytes, first=first,
        last=first + dur, tcp_flags=flags if proto == 6 else 0, agent=agent, if_name="eth0",
        in_if=1, out_if=0, ip_version=6 if ":" in src else 4, vlan=0, next_hop="", src_mask=0,
        dst_mask=0, src_as=0, dst_as=0, end_reason="idle", received=first + dur + 1,
        exporter="127.0.0.1")
    return [values[name] for name in ROW_FIELDS]


def web_browsing(client="10.0.0.5", resolver="10.0.0.53", t0=T0, sites=120, span=250.0):
    """A benign client: DNS lookups, completed HTTPS/HTTP conversations to many sites and their
    answers, QUIC, an SSH session, a few git-over-ssh fetches and one refused connection."""
    rows = []
    for i in range(sites):
        t = t0 + span * i / sites
        server = "198.18.%d.%d" % (i // 200, i % 200 + 1)
        sport = 50000 + i
        rows.append(flow(client, resolver, 33000 + i, 53, 17, 1, 70, t))
        rows.append(flow(resolver, client, 53, 33000 + i, 17, 1, 120, t + 0.01))
        port = 443 if i % 4 else 80
        rows.append(flow(client, server, sport, port, 6, 12 + i % 30, None, t + 0.02, 2.0, DONE))
        rows.append(flow(server, client, port, sport, 6, 20 + i % 50, None, t + 0.03, 2.0,
                         SYN | ACK | PSH | FIN))
        if i % 10 == 0:
            rows.append(flow(client, server, sport + 5000, 443, 17, 40, None, t, 5.0))
            rows.append(flow(server, client, 443, sport + 5000, 17, 60, None, t, 5.0))
    rows.append(flow(client, "10.0.0.22", 45000, 22, 6, 900, None, t0, 240.0, DONE))
    for i in range(5):
        rows.append(flow(client, "10.0.0.23", 46000 + i, 22, 6, 40, None, t0 + 30 * i, 3.0, DONE))
    rows.append(flow(client, "10.0.0.24", 47000, 8080, 6, 1, None, t0 + 5))
    rows.append(flow("10.0.0.24", client, 8080, 47000, 6, 1, None, t0 + 5, 0, RST | ACK))
    rows.sort(key=lambda r: r[ROW_FIELDS.index("first")])
    return rows


def check_idea(event):
    """Assert event is valid IDEA for CESNET's validator and strictly typed; return it."""
    from idea import valid  # the independent validator (PyPI idea-format)
    valid.Idea(event)
    assert event["Format"] == "IDEA0"
    assert uuid.UUID(event["ID"]).version == 4
    for key in TIME_ORDER:
        assert _TS.match(event[key]), (key, event[key])
    assert_time_order(event)
    for key in ("ConnCount", "FlowCount", "PacketCount", "ByteCount"):
        if key in event:
            assert type(event[key]) is int and event[key] >= 0
    for side in ("Source", "Target"):
        for part in event.get(side, ()):
            assert part.get("IP4") or part.get("IP6")
            assert all(type(p) is int for p in part.get("Port", ()))
    node = event["Node"][0]
    assert node["SW"] == ["myason"] and node["Type"] == ["Flow", "Statistical"]
    assert orjson.loads(orjson.dumps(event)) == event
    return event


def assert_time_order(event):
    """Assert WinStartTime <= EventTime <= CeaseTime <= WinEndTime <= DetectTime."""
    # One timestamp format throughout, so the texts sort as the times do.
    times = [event[key] for key in TIME_ORDER]
    assert times == sorted(times), dict(zip(TIME_ORDER, times))


def addrs(event, side):
    """All IP4 + IP6 addresses of an event's Source or Target."""
    out = []
    for part in event.get(side, ()):
        out += part.get("IP4", []) + part.get("IP6", [])
    return out
