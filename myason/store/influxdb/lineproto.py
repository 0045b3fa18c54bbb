"""InfluxDB line protocol: escaping, tag sets, per-batch timestamp offsets, flow and event lines."""

from myason.store.events import detector_of, parse_time


PROTO_NAMES = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6"}
EMPTY_TAG = "-"             # line protocol forbids empty tag values
PRECISIONS = {"ns": 1, "us": 1000, "ms": 1000000}
_ESCAPE_TAG = str.maketrans({",": "\\,", "=": "\\=", " ": "\\ ", "\\": "/"})


def escape_tag(value):
    """A tag key or value in line protocol form; never empty, no control characters."""
    text = str(value)
    if not text:
        return EMPTY_TAG
    if not text.isprintable():
        # Newlines would end the line; other controls are replaced too so every server agrees.
        text = "".join(ch if ch.isprintable() else "_" for ch in text)
    # Backslashes become "/": InfluxDB 1.x rejects a trailing one and VictoriaMetrics
    # unescapes "\\" while InfluxDB keeps it, so no spelling reads back the same everywhere.
    return text.translate(_ESCAPE_TAG)


def escape_measurement(name):
    """A measurement name in line protocol form."""
    text = escape_tag(name)
    return text.replace("\\=", "=")   # '=' needs no escape in a measurement


def proto_name(proto):
    """Tag value for an IP protocol number: tcp, udp, icmp, icmpv6, else the number."""
    return PROTO_NAMES.get(proto) or str(proto)


def tag_set(ident, static_tags=(), extra_names=()):
    """',k=v,...' for one aggregation key (without its bucket), tags sorted by key."""
    agent, iface, proto, ipv, ex = ident
    tags = [("agent", agent), ("interface", iface if iface not in ("", 0, None) else ""),
            ("protocol", proto_name(proto)), ("ip_version", ipv)]
    tags.extend(static_tags)
    tags.extend(zip(extra_names, ex))
    tags.sort()
    return "".join(",%s=%s" % (escape_tag(k), escape_tag(v)) for k, v in tags)


def point_offset(seq, interval, precision="ns"):
    """Nanoseconds added to an interval's start for the batch numbered `seq` (unique per batch)."""
    unit = PRECISIONS[precision]
    return (seq % (interval * 1000000000 // unit)) * unit


def format_lines(totals, interval, offset_ns, measurement="flows", static_tags=(), extra_names=()):
    """Line protocol lines for aggregated totals; timestamp = interval start + offset_ns (ns)."""
    meas = escape_measurement(measurement)
    interval_ns = interval * 1000000000
    cache = {}
    lines = []
    for key, (nbytes, npackets, nflows) in totals.items():
        ident = key[1:]
        tags = cache.get(ident)
        if tags is None:
            tags = cache[ident] = meas + tag_set(ident, static_tags, extra_names)
        lines.append("%s bytes=%di,packets=%di,flows=%di %d" % (
            tags, nbytes, npackets, nflows, key[0] * interval_ns + offset_ns))
    return lines


def event_lines(events, interval, offset_ns, measurement="events", static_tags=()):
    """Line protocol: count of events per interval (of DetectTime), category and detector.

    An event with several categories counts once under each. Malformed events are skipped.
    """
    counts = {}
    for ev in events:
        try:
            bucket = int(parse_time(ev["DetectTime"]) // interval)
            det = detector_of(ev)
            for cat in ev["Category"]:
                key = (bucket, str(cat), det)
                counts[key] = counts.get(key, 0) + 1
        except (KeyError, TypeError, ValueError):
            continue
    meas = escape_measurement(measurement)
    interval_ns = interval * 1000000000
    lines = []
    for (bucket, cat, det), n in sorted(counts.items()):
        tags = sorted((("category", cat), ("detector", det)) + tuple(static_tags))
        lines.append("%s%s count=%di %d" % (meas, "".join(",%s=%s" % (escape_tag(k), escape_tag(v)) for k, v in tags),
                                            n, bucket * interval_ns + offset_ns))
    return lines


