"""Flow enrichment: configured steps append the myason.schema.ENRICH columns to each collector row.

Config (the collector's `enrich` mapping)::

    order: [direction, service, geoip, rdns]      # default
    local_networks: [10.0.0.0/8, 2001:db8::/32]   # direction
    services_file: /etc/services                  # service (null: built-in table only)
    geoip: {country_database: ..., asn_database: ..., cache_size: 65536}
    rdns: {enabled: false, timeout: 1.0, max_entries: 10000, workers: 2}
"""
from __future__ import annotations

from myason.enrich.base import (Enricher, enrich_spec, enricher_class, enricher_names, register,
                                report_setup_notes, setup_note)
from myason.errors import ConfigError
from myason.options import parse_options
from myason.schema import ENRICH_DEFAULTS

__all__ = ["Enricher", "Pipeline", "build_pipeline", "enrich_spec", "enricher_class", "enricher_names", "register",
           "report_setup_notes", "setup_note"]


class Pipeline:
    """The active enrichment steps in order; enrich() extends rows in place."""

    def __init__(self, steps=()):
        self.steps = list(steps)
        self._applies = [step.apply for step in self.steps]
        self.errors = 0

    @property
    def names(self):
        """Names of the active steps, in order."""
        return [step.name for step in self.steps]

    def enrich(self, rows):
        """Extend each row (list, FIELDS first) in place by len(ENRICH_FIELDS) values; return rows.

        A step that raises on a row leaves that row's columns at their defaults for the step
        (bad input must not stop the collector); the error count is in `errors`.
        """
        applies = self._applies
        defaults = ENRICH_DEFAULTS
        for row in rows:
            out = list(defaults)
            for apply in applies:
                try:
                    apply(row, out)
                except Exception:  # noqa: BLE001 - one odd row must not stop the collector
                    self.errors += 1
            row.extend(out)
        return rows

    def close(self):
        """Close every step."""
        for step in self.steps:
            step.close()


def build_pipeline(config: dict | None = None) -> Pipeline:
    """A Pipeline of the steps in config['order'] (default direction, service, geoip, rdns).

    Steps whose setup() returns False (nothing configured) are left out. ConfigError names an
    unknown step or a bad option.
    """
    config = parse_options("enrich", config or {}, enrich_spec())
    order = config["order"]
    steps = []
    seen = set()
    for name in order:
        if name in seen:
            raise ConfigError("enrich.order", "step %r listed twice" % (name,))
        seen.add(name)
        try:
            cls = enricher_class(name)
        except (KeyError, TypeError):
            raise ConfigError("enrich.order", "unknown step %r (known: %s)"
                              % (name, ", ".join(enricher_names()))) from None
        step = cls()
        if step.setup(config):
            steps.append(step)
        else:
            step.close()
    return Pipeline(steps)
