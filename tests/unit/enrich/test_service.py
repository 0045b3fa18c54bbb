"""Tests for myason.services and the service enrichment (myason.enrich.service)."""
import pytest

from myason.enrich.base import OUT
from myason.enrich.service import ServiceEnricher, load_table
from myason.schema import ENRICH_DEFAULTS
from myason.services import builtin_table, parse_services, server_service

SERVICES = """\
# a tiny services file
ssh\t\t22/tcp\t\t\t\t# SSH Remote Login Protocol
myapp   7777/tcp   myapp-alias
myapp-u 7777/udp
broken  line
bad     99999/tcp
weird   12/icmp
http    80/tcp     www      # first name wins
www2    80/tcp
sctpsvc 9899/sctp
"""


def _service(proto, sport, dport, config=None):
    step = ServiceEnricher()
    assert step.setup(config if config is not None else {"services_file": None})
    out = list(ENRICH_DEFAULTS)
    step.apply(["10.0.0.1", "10.0.0.2", sport, dport, proto], out)
    return out[OUT["service"]]


@pytest.mark.parametrize("proto,sport,dport,name", [
    (6, 51000, 22, "ssh"),            # client -> server
    (6, 22, 51000, "ssh"),            # server -> client
    (6, 51000, 443, "https"),
    (17, 40000, 53, "domain"),
    (17, 53, 40000, "domain"),
    (6, 51000, 3389, "ms-wbt-server"),
    (6, 443, 3306, "https"),          # both known: the port below 1024 is the server
    (6, 3306, 5432, "postgresql"),    # both high and known: the destination
    (6, 25, 80, "http"),              # both low: the destination
    (6, 51000, 52000, ""),
    (1, 0, 8 << 8, ""),               # ICMP has no service
    (17, 51000, 514, "syslog"),
    (6, 51000, 514, "shell"),         # proto-aware
    (132, 51000, 5060, "sip"),
])
def test_builtin_services(proto, sport, dport, name):
    assert _service(proto, sport, dport) == name


def test_parse_services():
    table = parse_services(SERVICES)
    assert table[(6, 22)] == "ssh" and table[(6, 7777)] == "myapp"
    assert table[(17, 7777)] == "myapp-u" and table[(6, 80)] == "http"
    assert table[(132, 9899)] == "sctpsvc"
    assert (6, 99999) not in table and len(table) == 5


def test_services_file_overlays_builtin(tmp_path):
    path = tmp_path / "services"
    path.write_text(SERVICES)
    assert _service(6, 50000, 7777, {"services_file": str(path)}) == "myapp"
    assert _service(6, 50000, 443, {"services_file": str(path)}) == "https"
    table = load_table(str(tmp_path / "absent"))
    assert table == builtin_table()


def test_system_services_file_is_default():
    # Whatever /etc/services holds (or not), the common names come out.
    assert _service(6, 50000, 22, {}) == "ssh"
    assert server_service(builtin_table(), 6, 50000, 80) == "http"
