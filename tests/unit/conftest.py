"""Fixtures of the unit tests."""
import os

import pytest


@pytest.fixture
def umask022():
    """The umask of a daemon started by hand (umask 022), restored after the test."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)
