"""The compiled kernels (numba) of the fast paths, in one low-level package of their own.

Kernel modules (numba): decode (classic-pcap walk and frame decoding), flowtable (the flow table
of the agent's FastFlowCache), ring (the TPACKET_V3 block walker of live capture), pgcopy
(PostgreSQL binary COPY rows), influx (the InfluxDB writer's aggregation). registry builds
them (numba.njit, cached on disk, warmed by `python -m myason.kernels` at install) and load()
returns them; constants holds the packet constants the kernels share with the reference code.
native builds and loads the C versions of the replay kernels (decode and flow table, _native.c),
which load() prefers: a replay then never imports numba.

Layer rule: this package imports numpy, numba and the bottom layer (myason.schema) only, never
myason.agent, myason.store, myason.collector or myason.api; the agent and the store import it
(tests/unit/test_layers.py). Importing the package is cheap: numba is imported by load().
"""
from myason.kernels.registry import (RO_BYTES, STATS, helper, kernel, load, load_numba, load_or_none, native_only,
                                     ro)

__all__ = ["RO_BYTES", "STATS", "helper", "kernel", "load", "load_numba", "load_or_none", "native_only", "ro"]
