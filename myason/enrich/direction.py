"""Direction of a flow relative to the configured local networks."""
from __future__ import annotations

import logging

from myason.enrich.base import COL, OUT, Enricher, register, setup_note
from myason.nets import NetSet
from myason.options import check_int, check_list, check_optional

log = logging.getLogger("myason.enrich.direction")

INBOUND, OUTBOUND, INTERNAL, EXTERNAL = "inbound", "outbound", "internal", "external"
_SRC, _DST, _OUT = COL["src_ip"], COL["dst_ip"], OUT["direction"]


def direction_of(src_local: bool, dst_local: bool) -> str:
    """inbound (to a local host), outbound (from one), internal (both) or external (neither)."""
    if src_local:
        return INTERNAL if dst_local else OUTBOUND
    return INBOUND if dst_local else EXTERNAL


@register
class DirectionEnricher(Enricher):
    """Fills `direction` from `local_networks` (IPv4/IPv6 CIDRs); off when none are configured."""

    name = "direction"

    def __init__(self):
        self.local = NetSet(())

    SPEC = {"local_networks": ([], check_optional(check_list)), "direction_cache_size": (65536, check_int(lo=1))}

    def setup(self, config):
        """`local_networks` (CIDRs) and `direction_cache_size` (addresses remembered)."""
        options = self.options(config)
        self.local = NetSet(options["local_networks"] or (), key="enrich.local_networks",
                            cache_size=options["direction_cache_size"])
        if not self.local:
            setup_note(log, logging.INFO, "direction enrichment off: enrich.local_networks is empty")
            return False
        return True

    def apply(self, row, out):
        """Set out[direction]."""
        # The NetSet's cache read inline: a hit (nearly every flow) then costs no call.
        local = self.local
        get = local._cache.get
        src = get(row[_SRC])
        if src is None:
            src = local.contains(row[_SRC])
        dst = get(row[_DST])
        if dst is None:
            dst = local.contains(row[_DST])
        if src:
            out[_OUT] = INTERNAL if dst else OUTBOUND
        else:
            out[_OUT] = INBOUND if dst else EXTERNAL
