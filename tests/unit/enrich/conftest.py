"""Fixtures of the enrichment tests."""
import pytest

from myason.enrich import base


@pytest.fixture
def notes():
    """Setup notes reported in this test (as in the collector), from a clean slate; restored after."""
    saved = dict(base._notes, said=set(base._notes["said"]))
    base._notes.update(on=True, said=set())
    yield
    base._notes.clear()
    base._notes.update(saved)
