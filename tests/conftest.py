"""Fixtures shared by every test directory."""
# Defined once here so that all modules share one session of database servers.
from tests.support.services import servers  # noqa: F401
