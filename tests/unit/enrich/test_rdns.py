"""Tests for myason.enrich.rdns: asynchronous reverse DNS (localhost only) and its cache."""
import socket
import threading
import time

import pytest

from myason.schema import ENRICH_DEFAULTS
from myason.enrich.base import OUT
from myason.enrich.rdns import RdnsEnricher, ReverseCache, resolve
from myason.errors import ConfigError


def _expected(addr):
    try:
        return socket.gethostbyaddr(addr)[0]
    except OSError:
        return ""


def test_off_by_default():
    assert RdnsEnricher().setup({}) is False
    assert RdnsEnricher().setup({"rdns": {"enabled": False}}) is False


@pytest.mark.parametrize("addr", ["127.0.0.1", "::1"])
def test_localhost_resolves_asynchronously(addr):
    expected = _expected(addr)
    step = RdnsEnricher()
    assert step.setup({"rdns": {"enabled": True, "timeout": 2.0}})
    try:
        out = list(ENRICH_DEFAULTS)
        step.apply([addr, addr, 1, 2, 6], out)
        assert out[OUT["src_host"]] == ""             # not ready yet: never waits
        assert step.cache.wait(5.0)
        out = list(ENRICH_DEFAULTS)
        step.apply([addr, addr, 1, 2, 6], out)
        assert out[OUT["src_host"]] == out[OUT["dst_host"]] == expected
        assert step.cache.stats["hits"] >= 2      # dst may already hit in the first call
    finally:
        step.close()


def test_resolve_never_raises():
    assert resolve("not an address") == ""
    assert resolve("127.0.0.1") == _expected("127.0.0.1")


def test_slow_resolver_times_out_and_never_blocks():
    release = threading.Event()

    def stuck(addr):
        release.wait(5)
        return "late.example"

    cache = ReverseCache(timeout=0.05, workers=1, max_pending=2, resolver=stuck)
    try:
        t = time.perf_counter()
        assert [cache.get("127.0.0.%d" % i) for i in range(1, 6)] == [""] * 5
        assert time.perf_counter() - t < 0.5      # the resolver sleeps 5 s
        assert cache.stats["dropped"] == 3           # only max_pending lookups in flight
        time.sleep(0.08)
        assert cache.get("127.0.0.1") == ""          # timed out: cached as no name
        assert cache.stats["timeouts"] == 2
        release.set()
        deadline = time.time() + 5
        while cache.get("127.0.0.1") != "late.example" and time.time() < deadline:
            time.sleep(0.01)                         # a late answer still fills the cache
        assert cache.get("127.0.0.1") == "late.example"
    finally:
        release.set()
        cache.close()


def test_cache_is_bounded_lru_with_ttl():
    now = [1000.0]
    cache = ReverseCache(max_entries=3, ttl=10, negative_ttl=1, resolver=lambda a: "h-" + a,
                         clock=lambda: now[0])
    try:
        for addr in ("a", "b", "c", "d"):
            cache.get(addr)
        assert cache.wait(5)
        assert len(cache) == 3 and cache.stats["evicted"] == 1
        assert cache.get("d") == "h-d" and cache.get("b") == "h-b"
        now[0] += 11                                 # expired: looked up again
        assert cache.get("b") == ""
        assert cache.wait(5) and cache.get("b") == "h-b"
    finally:
        cache.close()


def test_unknown_option():
    with pytest.raises(ConfigError) as info:
        RdnsEnricher().setup({"rdns": {"enabled": True, "timout": 1}})
    assert info.value.key == "enrich.rdns.timout"
