"""Tests for myason.enrich.direction."""
import logging

import pytest

from myason.schema import ENRICH_DEFAULTS
from myason.enrich.base import OUT
from myason.enrich.direction import DirectionEnricher, direction_of
from myason.errors import ConfigError

LOCAL = {"local_networks": ["10.0.0.0/8", "192.0.2.0/24", "2001:db8::/32"]}


def _direction(src, dst, config=LOCAL):
    step = DirectionEnricher()
    assert step.setup(config)
    out = list(ENRICH_DEFAULTS)
    step.apply([src, dst, 1, 2, 6], out)
    return out[OUT["direction"]]


@pytest.mark.parametrize("src,dst,expected", [
    ("10.1.1.1", "8.8.8.8", "outbound"),
    ("8.8.8.8", "10.1.1.1", "inbound"),
    ("10.1.1.1", "192.0.2.9", "internal"),
    ("8.8.8.8", "1.1.1.1", "external"),
    ("2001:db8::1", "2a00::1", "outbound"),
    ("2a00::1", "2001:db8:5::1", "inbound"),
    ("2001:db8::1", "10.0.0.1", "internal"),
    ("garbage", "10.0.0.1", "inbound"),
])
def test_directions(src, dst, expected):
    assert _direction(src, dst) == expected


def test_direction_of():
    assert [direction_of(a, b) for a in (False, True) for b in (False, True)] == [
        "external", "inbound", "outbound", "internal"]


def test_off_without_local_networks(caplog, notes):
    caplog.set_level(logging.INFO, logger="myason.enrich.direction")
    step = DirectionEnricher()
    assert step.setup({}) is False
    assert step.setup({"local_networks": []}) is False
    assert "local_networks is empty" in caplog.text


def test_bad_network_is_config_error():
    with pytest.raises(ConfigError) as info:
        DirectionEnricher().setup({"local_networks": ["10.0.0.0/40"]})
    assert info.value.key == "enrich.local_networks"
