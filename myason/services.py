"""Well-known service ports: the built-in IANA table, /etc/services parsing, which side is the server.

A low layer: the service enrichment names flows with it, the rollups rank service ports by it
(myason.store.rollup.service_ports), whatever host they run on.
"""
from __future__ import annotations

PROTO_NUMBERS = {"tcp": 6, "udp": 17, "sctp": 132}

# The common services by IANA name, so the step works where /etc/services is missing or thin
# (containers). Entries apply to both TCP and UDP unless the tuple names one protocol.
_BUILTIN = (
    (20, "ftp-data"), (21, "ftp"), (22, "ssh"), (23, "telnet"), (25, "smtp"), (43, "whois"),
    (53, "domain"), (67, "bootps"), (68, "bootpc"), (69, "tftp"), (80, "http"), (88, "kerberos"),
    (110, "pop3"), (111, "sunrpc"), (119, "nntp"), (123, "ntp"), (135, "epmap"),
    (137, "netbios-ns"), (138, "netbios-dgm"), (139, "netbios-ssn"), (143, "imap"),
    (161, "snmp"), (162, "snmptrap"), (179, "bgp"), (389, "ldap"), (443, "https"),
    (445, "microsoft-ds"), (465, "submissions"), (500, "isakmp"), (514, "syslog", "udp"),
    (514, "shell", "tcp"), (515, "printer"), (520, "router", "udp"), (546, "dhcpv6-client"),
    (547, "dhcpv6-server"), (554, "rtsp"), (587, "submission"), (631, "ipp"), (636, "ldaps"),
    (853, "domain-s"), (873, "rsync"), (989, "ftps-data"), (990, "ftps"), (993, "imaps"),
    (995, "pop3s"), (1080, "socks"), (1194, "openvpn"), (1433, "ms-sql-s"), (1434, "ms-sql-m"),
    (1521, "ncube-lm"), (1701, "l2tp"), (1723, "pptp"), (1812, "radius"), (1813, "radius-acct"),
    (1883, "mqtt"), (1900, "ssdp"), (2049, "nfs"), (2181, "eforward"), (3128, "ndl-aas"),
    (3268, "msft-gc"), (3306, "mysql"), (3389, "ms-wbt-server"), (3478, "stun"),
    (4500, "ipsec-nat-t"), (5060, "sip"), (5061, "sips"), (5353, "mdns"), (5432, "postgresql"),
    (5671, "amqps"), (5672, "amqp"), (5900, "rfb"), (6379, "redis"), (6443, "sun-sr-https"),
    (8080, "http-alt"), (8443, "pcsync-https"), (8883, "secure-mqtt"),
    (11211, "memcache"), (27017, "mongodb"),
)


def builtin_table() -> dict:
    """{(proto number, port): name} of the built-in common services (tcp, udp, sctp)."""
    table = {}
    for entry in _BUILTIN:
        port, name = entry[0], entry[1]
        protos = (entry[2],) if len(entry) > 2 else ("tcp", "udp", "sctp")
        for proto in protos:
            table[(PROTO_NUMBERS[proto], port)] = name
    return table


def parse_services(text: str) -> dict:
    """{(proto number, port): name} from /etc/services text; malformed lines are skipped."""
    table = {}
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) < 2 or "/" not in fields[1]:
            continue
        port, _, proto = fields[1].partition("/")
        number = PROTO_NUMBERS.get(proto.lower())
        if number is None or not port.isdigit() or not 0 < int(port) <= 65535:
            continue
        # The first line for a port is its primary name, as getservbyport() answers.
        table.setdefault((number, int(port)), fields[0])
    return table


def server_service(table, proto, src_port, dst_port) -> str:
    """Service name of the server side of a flow, '' when neither port is known.

    The side whose port is a known service is the server; when both are known, a port below 1024
    wins over a higher one (clients use ephemeral ports), and otherwise the destination.
    """
    dst = table.get((proto, dst_port))
    src = table.get((proto, src_port))
    if dst is None:
        return src or ""
    if src is None:
        return dst
    if src_port < 1024 <= dst_port:
        return src
    return dst
