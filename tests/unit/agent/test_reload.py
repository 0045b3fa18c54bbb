"""Reload planning (which keys apply live, which need a restart) and the cache changes it makes."""
import dataclasses
import os

import pytest
from cryptography.fernet import Fernet

from myason import wire
from myason.agent import reload as rl
from myason.agent.app import MeterThread
from myason.agent.process import PacketProcessor
from myason.agent.config import AgentConfig, InterfaceConfig
from myason.errors import ConfigError

BASE = AgentConfig(interfaces=(InterfaceConfig("eth0"), InterfaceConfig("eth1", "tcp")),
                   agent_id="a1", key_file="/k", collectors=(("192.0.2.1", 9999),))


def plan(old=BASE, live=True, cache_live=True, old_keys=(b"k1",), new_keys=(b"k1",), **changes):
    return rl.plan_reload(old, dataclasses.replace(old, **changes), old_keys, new_keys, live, cache_live)


def test_same_config_and_keys_is_a_noop():
    p = plan()
    assert p.noop and p.changed == () and not p.export and not p.cache and not p.capture
    assert rl.describe(p) == "no changes"


def test_key_rotation_in_place_rebuilds_only_the_batcher():
    p = plan(new_keys=(b"k2", b"k1"))
    assert p.keys_changed and p.export and not p.sender and not p.capture and not p.noop
    assert "new keys" in rl.describe(p)


def test_new_collector_replaces_the_sender_and_reopens_capture_for_the_exclusion():
    p = plan(collectors=(("192.0.2.1", 9999), ("192.0.2.2", 9999)))
    assert p.sender and p.export and p.changed == ("collectors",)
    assert [i.name for i in p.capture.reopened] == ["eth0", "eth1"]
    assert not p.capture.added and not p.capture.removed


def test_new_collector_without_exclusion_leaves_capture_alone():
    old = dataclasses.replace(BASE, exclude_export_traffic=False)
    p = plan(old, collectors=(("192.0.2.2", 9999),))
    assert p.sender and not p.capture


def test_interface_changes_are_per_interface():
    p = plan(interfaces=(InterfaceConfig("eth1", "udp"), InterfaceConfig("eth2")))
    assert [i.name for i in p.capture.added] == ["eth2"]
    assert p.capture.removed == ("eth0",)
    assert [(i.name, i.bpf_filter) for i in p.capture.reopened] == [("eth1", "udp")]
    assert not p.export and not p.cache
    assert "capture: +eth2 -eth0 reopened eth1" in rl.describe(p)


@pytest.mark.parametrize("key,value", [("promiscuous", False), ("snaplen", 1500)])
def test_capture_wide_keys_reopen_every_interface(key, value):
    p = plan(**{key: value})
    assert {i.name for i in p.capture.reopened} == {"eth0", "eth1"}


@pytest.mark.parametrize("key,value", [("cache_limit", 10), ("cache_active_timeout", 60.0),
                                       ("cache_inactive_timeout", 5.0), ("cache_fin_timeout", 0.0),
                                       ("tick", 0.5)])
def test_cache_keys_apply_live(key, value):
    p = plan(**{key: value})
    assert p.cache and p.restart == () and getattr(p.cfg, key) == value


def test_cache_keys_need_a_restart_when_the_engine_cannot_take_them():
    p = plan(cache_live=False, cache_limit=10, export_interval=3.0)
    assert p.restart == ("cache_limit",) and not p.cache
    assert p.cfg.cache_limit == BASE.cache_limit and p.cfg.export_interval == 3.0


def test_restart_only_keys_are_reported_and_kept_at_their_old_values():
    p = plan(agent_id="a2", packet_queue=5, flow_queue=7, max_datagram=1200)
    assert p.restart == ("agent_id", "flow_queue", "packet_queue")
    assert (p.cfg.agent_id, p.cfg.packet_queue, p.cfg.flow_queue) == ("a1", 256, 100000)
    assert p.cfg.max_datagram == 1200 and p.export and not p.sender
    assert "applied: max_datagram" in rl.describe(p)


def test_replay_ignores_capture_keys():
    p = plan(live=False, interfaces=(), snaplen=1500, stats_interval=5.0)
    assert not p.capture and p.cfg.interfaces == BASE.interfaces and p.cfg.snaplen == BASE.snaplen
    assert p.cfg.stats_interval == 5.0


def test_capture_params_follow_the_exclusion_switch():
    iface = BASE.interfaces[1]
    assert rl.capture_params(BASE, iface) == ("tcp", True, 262144, (("192.0.2.1", 9999),), 1 << 20, 2048, 32, 0.05)
    off = dataclasses.replace(BASE, exclude_export_traffic=False)
    assert rl.capture_params(off, iface)[3] == ()


def test_ring_sizes_reopen_the_sockets_and_workers_wait_for_a_restart():
    p = plan(ring_blocks=64, workers=BASE.workers + 1, engine="python")
    assert [i.name for i in p.capture.reopened] == [i.name for i in BASE.interfaces]
    assert p.restart == ("engine", "workers")
    assert p.cfg.ring_blocks == 64 and p.cfg.workers == BASE.workers and p.cfg.engine == "fast"


# -- load_new_config: errors name the key ----------------------------------------------------

def _key_file(tmp_path, mode=0o600):
    path = tmp_path / "agent.key"
    path.write_bytes(Fernet.generate_key() + b"\n")
    os.chmod(path, mode)
    return path


def _conf(tmp_path, text):
    path = tmp_path / "agent.yaml"
    path.write_text(text)
    return str(path)


def test_load_new_config_reads_config_and_keys(tmp_path):
    key = _key_file(tmp_path)
    cfg, keys = rl.load_new_config(_conf(tmp_path, "interfaces: [eth0]\nkey_file: %s\n"
                                         "collectors: ['127.0.0.1:9']\n" % key))
    assert cfg.interfaces[0].name == "eth0" and len(keys) == 1 and keys[0] == key.read_bytes().strip()


@pytest.mark.parametrize("text,key", [
    ("interfaces: [eth0]\ncache_limit: 0\n", "cache_limit"),
    ("interfaces: [eth0]\ncache_limt: 5\n", "cache_limt"),
    ("interfaces: [eth0]\ncollectors: ['127.0.0.1:9']\n", "key_file"),
    ("interfaces: [eth0]\nkey_file: KEY\n", "collectors"),
    ("interfaces: []\nkey_file: KEY\ncollectors: ['127.0.0.1:9']\n", "interfaces"),
    ("interfaces: [{name: eth0, bpf: x}]\n", "interfaces[0].bpf"),
])
def test_load_new_config_errors_name_the_key(tmp_path, text, key):
    text = text.replace("KEY", str(_key_file(tmp_path)))
    with pytest.raises(ConfigError) as info:
        rl.load_new_config(_conf(tmp_path, text))
    assert info.value.key == key


def test_unsafe_key_file_is_reported_under_key_file(tmp_path):
    key = _key_file(tmp_path, 0o644)
    with pytest.raises(ConfigError) as info:
        rl.load_new_config(_conf(tmp_path, "interfaces: [eth0]\nkey_file: %s\n"
                                 "collectors: ['127.0.0.1:9']\n" % key))
    assert info.value.key == "key_file"


def test_no_export_needs_no_key(tmp_path):
    cfg, keys = rl.load_new_config(_conf(tmp_path, "interfaces: [eth0]\n"), export=False)
    assert keys == () and cfg.key_file is None


# -- applying ----------------------------------------------------------------------------------

def _thread(cfg):
    proc = PacketProcessor(cfg, cfg.agent_id, packet_clock=False)
    return MeterThread("p", proc, None, None, cfg.tick)


def test_set_cache_params_sets_timers_and_evicts_down_to_a_lower_limit():
    cfg = AgentConfig(agent_id="a1", cache_limit=100)
    t = _thread(cfg)
    for i in range(50):
        t.proc.cache.add(1000.0 + i, b"k%03d" % i, 60)
    new = dataclasses.replace(cfg, cache_limit=20, cache_inactive_timeout=3.0, cache_active_timeout=9.0,
                              cache_fin_timeout=0.5, tick=0.25)
    rl.set_cache_params(t, new)
    c = t.proc.cache
    assert (c.limit, c.inactive, c.active, c.fin) == (20, 3.0, 9.0, 0.5)
    assert t.tick_every == t.proc.tick_every == 0.25
    assert len(c) == 20 and c.counts["cache_full"] == 30
    # The least recently updated flows went first.
    assert sorted(r[0] for r in c.take()) == [b"k%03d" % i for i in range(30)]


def test_call_soon_runs_in_the_processor_thread_before_the_next_batch():
    import queue
    import threading
    cfg = AgentConfig(agent_id="a1")
    inbox, outbox = queue.Queue(), queue.Queue()
    seen = []
    t2 = MeterThread("p2", PacketProcessor(cfg, "a1", packet_clock=False), inbox, outbox, 0.05)
    t2.call_soon(lambda thread: seen.append(threading.current_thread() is thread))
    t2.start()
    inbox.put([])
    inbox.put(None)
    t2.join(5)
    assert seen == [True]


def test_batcher_factory_continues_the_sequence():
    key = Fernet.generate_key()
    cfg = AgentConfig(agent_id="a1", max_datagram=1000)
    b = rl.batcher_factory(cfg, Fernet(key))(41)
    assert b.next_seq == 41 and b.max_datagram == 1000
    b.add(["10.0.0.1", "10.0.0.2", 1, 2, 17, 0, 1, 60, 1.0, 1.0, 0, "a1", "", 0, 0, 4, 0, "", 0, 0, 0, 0,
           "idle"])
    (d,) = b.flush()
    from cryptography.fernet import MultiFernet
    assert wire.decode_datagram(d, lambda _: MultiFernet([Fernet(key)])).seq == 41
