"""IANA service name of a flow's server port, from /etc/services plus a built-in table."""
from __future__ import annotations

import logging

from myason.enrich.base import COL, OUT, Enricher, register, setup_note
from myason.options import check_optional, check_str
from myason.services import builtin_table, parse_services

log = logging.getLogger("myason.enrich.service")

DEFAULT_SERVICES_FILE = "/etc/services"


def load_table(services_file=DEFAULT_SERVICES_FILE) -> dict:
    """Built-in table overlaid with services_file (skipped when None, '' or unreadable)."""
    table = builtin_table()
    if services_file:
        try:
            with open(services_file, encoding="utf-8", errors="replace") as fh:
                table.update(parse_services(fh.read()))
        except OSError as exc:
            setup_note(log, logging.INFO, "service names: %s unreadable (%s), built-in table only",
                       services_file, exc.strerror or exc)
    return table


@register
class ServiceEnricher(Enricher):
    """Fills `service` for TCP, UDP and SCTP flows; option `services_file` (/etc/services)."""

    name = "service"

    def __init__(self):
        self.table = builtin_table()

    SPEC = {"services_file": (DEFAULT_SERVICES_FILE, check_optional(check_str(allow_empty=False,
                                                                           expected="a file path")))}

    def setup(self, config):
        """Load the table once; `services_file: null` uses the built-in table only."""
        options = self.options(config)
        self.table = load_table(options["services_file"])
        return True

    def apply(self, row, out, _p=COL["proto"], _s=COL["src_port"], _d=COL["dst_port"],
              _o=OUT["service"]):
        """Set out[service]."""
        get = self.table.get
        proto = row[_p]
        dst = get((proto, row[_d]))
        src = get((proto, row[_s]))
        if dst is None:
            out[_o] = src or ""
        elif src is None or not (row[_s] < 1024 <= row[_d]):
            out[_o] = dst
        else:
            out[_o] = src
