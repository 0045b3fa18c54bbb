"""The shared test harness: real servers, processes, namespaces, traffic and Grafana query expansion.

Test modules and bench scripts import helpers from here, never from other test modules; a helper
one module uses stays in that module. Fixtures live in the conftest.py of the layer that uses
them (tests/, tests/unit/, tests/integration/), not here. tests/unit/test_test_layout.py checks both.

services: the database servers; collector, streams: collector processes and the datagrams fed to
them; agents, netns: live agents in network namespaces; api: the API's data and process; stores,
rows, rollups: store access, rows to write, the rollups restated in Python; datagrams, flows,
attacks: collector, detector and attack inputs; docs, systemd, modes, mmdb: the reference doc,
unit files, file modes and ASN databases; oracle, trafficgen, grafana, summary.
"""
