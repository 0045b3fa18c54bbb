"""The enricher interface, the enriched columns and the registry of enrichers by name."""
from __future__ import annotations

import importlib
import threading

from myason.options import check_list, parse_options

from myason.schema import ENRICH_FIELDS, INDEX

# Index of each enriched column (myason.schema.ENRICH) inside the `out` list an enricher fills.
OUT = {name: i for i, name in enumerate(ENRICH_FIELDS)}
# Index of the flow columns enrichers read (rows start with the wire fields whatever follows).
COL = INDEX

DEFAULT_ORDER = ("direction", "service", "geoip", "rdns")

# Explicit registry of the built-in enrichers (goflow2 style): name -> module. Modules are imported
# only when a pipeline uses them, so importing the package has no side effects.
_BUILTIN = {
    "direction": "myason.enrich.direction",
    "service": "myason.enrich.service",
    "geoip": "myason.enrich.geoip",
    "rdns": "myason.enrich.rdns",
}
_REGISTRY = {}


# Notes a step's setup makes (a step off, a database or file missing) matter only to a process
# that enriches flows, and once: every command that loads the collector's config builds the
# pipeline to validate it (events, greylist, api, maintain, which only read the store, too), and
# the collector builds it again for each processor and reload. So they are logged only after
# report_setup_notes() (the collector calls it at start; spawned processor processes never do,
# their parent has said it), and each distinct note once per process.
_notes = {"on": False, "said": set()}
_notes_lock = threading.Lock()


def report_setup_notes(on=True):
    """Log the steps' setup notes in this process from now on (each distinct one once)."""
    _notes["on"] = bool(on)


def setup_note(logger, level, msg, *args):
    """Log a note about a step's setup, if this process reports them and has not said it yet."""
    if not _notes["on"]:
        return
    key = (logger.name, msg % args if args else msg)
    with _notes_lock:
        if key in _notes["said"]:
            return
        _notes["said"].add(key)
    logger.log(level, msg, *args)


class Enricher:
    """One enrichment step: setup(options) once, then apply(row, out) per flow.

    SPEC declares the keys of the collector's `enrich` mapping this step owns, as a
    myason.options spec {key: (default, check)}: build_pipeline rejects a key no step owns, and
    setup() reads its own with self.options(config).
    """

    name = ""
    SPEC: dict = {}

    def options(self, config: dict) -> dict:
        """This step's keys of the `enrich` mapping, validated, with their defaults."""
        return parse_options("enrich", {k: v for k, v in config.items() if k in self.SPEC}, self.SPEC)

    def setup(self, config: dict) -> bool:
        """Read the step's options from the `enrich` mapping (self.options); False switches it off."""
        return True

    def apply(self, row, out) -> None:
        """Fill this step's columns of `out` (ENRICH_FIELDS order) from `row` (FIELDS first)."""
        raise NotImplementedError

    def close(self) -> None:
        """Release files, threads or sockets."""


def register(cls):
    """Class decorator: make an enricher available by its `name` in the `order` list."""
    if not cls.name:
        raise ValueError("enricher without a name")
    if _REGISTRY.get(cls.name, cls) is not cls:
        raise ValueError("enricher name %r taken" % cls.name)
    _REGISTRY[cls.name] = cls
    return cls


def enricher_class(name):
    """The enricher class registered under `name`; KeyError lists the known names."""
    if name not in _REGISTRY and name in _BUILTIN:
        importlib.import_module(_BUILTIN[name])
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(enricher_names())
        raise KeyError("unknown enricher %r (known: %s)" % (name, known)) from None


def enricher_names():
    """Names of the built-in and registered enrichers."""
    return sorted(set(_BUILTIN) | set(_REGISTRY))


def enrich_spec():
    """Every key of the `enrich` mapping: `order`, then each known step's SPEC."""
    spec = {"order": (list(DEFAULT_ORDER), check_list)}
    for name in enricher_names():
        spec.update(enricher_class(name).SPEC)
    return spec
