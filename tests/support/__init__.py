"""The shared test harness: real servers, processes, namespaces, traffic and Grafana query expansion.

Test modules import helpers from here, never from other test modules.
"""
