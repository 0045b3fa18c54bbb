"""Fixtures shared by every test directory."""
import os

import pytest

from tests.support.services import ServicesUnavailable, start_services, stop_services


# Session-wide, so that every module shares one set of database servers.
@pytest.fixture(scope="session")
def servers():
    """PostgreSQL, InfluxDB and VictoriaMetrics for the whole session; skips when unavailable."""
    try:
        srv = start_services(watch_pid=os.getpid())
    except ServicesUnavailable as e:
        pytest.skip(str(e))
    try:
        yield srv
    finally:
        stop_services(srv)
