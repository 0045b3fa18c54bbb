"""Tests for myason.agent.config and myason.options: defaults, validation messages, YAML loading,
conf/agent.yaml in step with code."""
import dataclasses
import re
from pathlib import Path

import pytest
import yaml

from myason.agent import config
from myason.agent.config import AgentConfig, InterfaceConfig, load_agent_config
from myason.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
AGENT_YAML = REPO / "conf" / "agent.yaml"


def write(tmp_path, text, name="agent.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def load_err(overrides):
    with pytest.raises(ConfigError) as info:
        load_agent_config(overrides=overrides)
    return info.value


# --- defaults ---------------------------------------------------------------------------------

def test_defaults_match_the_spec():
    cfg = load_agent_config()
    assert cfg == AgentConfig()
    assert cfg.interfaces == () and cfg.collectors == ()
    assert cfg.key_file is None and cfg.asn_database is None
    assert (cfg.cache_limit, cfg.max_datagram) == (500000, 1400)
    assert (cfg.packet_queue, cfg.flow_queue) == (256, 100000)
    assert (cfg.cache_active_timeout, cfg.cache_inactive_timeout) == (1800.0, 15.0)
    assert cfg.cache_fin_timeout == 2.0
    assert (cfg.export_interval, cfg.tick, cfg.stats_interval) == (1.0, 1.0, 60.0)
    assert cfg.exclude_export_traffic is True and cfg.promiscuous is True
    assert cfg.snaplen == 262144
    assert re.fullmatch(r"[A-Za-z0-9._:-]{1,64}", cfg.agent_id)


def test_default_agent_id_is_sanitised(monkeypatch):
    monkeypatch.setattr(config.socket, "gethostname", lambda: "my host/with é" + "x" * 100)
    agent_id = config.default_agent_id()
    assert agent_id.startswith("my-host-with--")
    assert len(agent_id) == 64
    assert AgentConfig().agent_id == agent_id
    monkeypatch.setattr(config.socket, "gethostname", lambda: "")
    assert config.default_agent_id() == "myason-agent"


def test_config_is_frozen_and_replace_revalidates():
    cfg = AgentConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.cache_limit = 5
    assert dataclasses.replace(cfg, cache_limit=7).cache_limit == 7
    with pytest.raises(ConfigError):
        dataclasses.replace(cfg, cache_limit=0)


# --- per-key validation -----------------------------------------------------------------------

BAD_VALUES = [
    ("interfaces", "eth0"),
    ("interfaces", [5]),
    ("agent_id", "has space"),
    ("agent_id", "x" * 65),
    ("agent_id", ""),
    ("agent_id", 7),
    ("key_file", ""),
    ("key_file", 3),
    ("collectors", "127.0.0.1:9999"),
    ("cache_limit", "abc"),
    ("cache_limit", 0),
    ("cache_limit", 1.5),
    ("cache_limit", True),
    ("cache_active_timeout", 0),
    ("cache_active_timeout", "1s"),
    ("cache_active_timeout", float("inf")),
    ("cache_inactive_timeout", -1),
    ("cache_fin_timeout", -0.5),
    ("cache_fin_timeout", float("nan")),
    ("max_datagram", 511),
    ("max_datagram", 65508),
    ("export_interval", 0.0),
    ("tick", 0),
    ("tick", [1]),
    ("packet_queue", 0),
    ("flow_queue", -3),
    ("flow_queue", "100"),
    ("exclude_export_traffic", "yes"),
    ("exclude_export_traffic", 1),
    ("promiscuous", "true"),
    ("snaplen", 10),
    ("snaplen", 262145),
    ("asn_database", ""),
    ("asn_database", ["a.mmdb"]),
    ("stats_interval", -1),
    ("metrics", 9107),
    ("metrics", "127.0.0.1"),
    ("metrics", "[::1]:99999"),
    ("engine", "numba"),
    ("engine", 1),
    ("workers", 0),
    ("workers", 65),
    ("workers", "2"),
    ("ring_block_size", 1 << 20 | 4096),
    ("ring_block_size", 32768),
    ("ring_block_size", 1 << 28),
    ("ring_frame_size", 2040),
    ("ring_frame_size", 64),
    ("ring_blocks", 1),
    ("ring_block_timeout", 0),
    ("ring_block_timeout", 61),
]


@pytest.mark.parametrize("key,value", BAD_VALUES, ids=["%s=%r" % kv for kv in BAD_VALUES])
def test_bad_value_names_the_key(key, value):
    err = load_err({key: value})
    assert err.key == key or err.key.startswith(key + "[")
    assert str(err).startswith(err.key + ": ")


def test_every_field_has_a_bad_value_case():
    tested = {key for key, _ in BAD_VALUES}
    assert tested == {f.name for f in dataclasses.fields(AgentConfig)}


def test_message_format_for_ints():
    assert str(load_err({"cache_limit": "abc"})) == "cache_limit: must be an integer >= 1, got 'abc'"
    assert "between 512 and 65507" in str(load_err({"max_datagram": 100}))


def test_bad_value_in_file_names_the_key(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_agent_config(write(tmp_path, "cache_limit: abc\n"))
    assert info.value.key == "cache_limit"


def test_null_in_file_is_an_error_for_required_values(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_agent_config(write(tmp_path, "tick:\n"))
    assert info.value.key == "tick"
    assert load_agent_config(write(tmp_path, "key_file: null\n")).key_file is None


def test_numbers_are_normalised():
    cfg = load_agent_config(overrides={"cache_limit": 10.0, "cache_active_timeout": 60, "stats_interval": 0})
    assert cfg.cache_limit == 10 and type(cfg.cache_limit) is int
    assert cfg.cache_active_timeout == 60.0 and type(cfg.cache_active_timeout) is float
    assert cfg.stats_interval == 0.0
    assert load_agent_config(overrides={"cache_fin_timeout": 0}).cache_fin_timeout == 0.0


def test_yaml_bools_accepted_quoted_strings_rejected(tmp_path):
    assert load_agent_config(write(tmp_path, "promiscuous: no\n")).promiscuous is False
    with pytest.raises(ConfigError) as info:
        load_agent_config(write(tmp_path, "promiscuous: 'no'\n"))
    assert info.value.key == "promiscuous"


# --- interfaces -------------------------------------------------------------------------------

def test_seed_style_interfaces(tmp_path):
    path = write(tmp_path, """
interfaces:
  - eth0
  - name: eth1
    bpf_filter: "not port 22"
  - {name: lo}
agent_id: sensor-1
""")
    cfg = load_agent_config(path)
    assert cfg.interfaces == (
        InterfaceConfig("eth0"), InterfaceConfig("eth1", "not port 22"), InterfaceConfig("lo", ""))
    assert cfg.agent_id == "sensor-1"


@pytest.mark.parametrize("interfaces,key", [
    (["eth0", {"name": "eth1", "bpf_filter": 5}], "interfaces[1].bpf_filter"),
    (["eth0", {"bpf_filter": "tcp"}], "interfaces[1].name"),
    ([{"name": ""}], "interfaces[0].name"),
    (["a" * 16], "interfaces[0]"),
    (["eth 0"], "interfaces[0]"),
    (["eth0", "eth0"], "interfaces[1]"),
    ([["eth0"]], "interfaces[0]"),
    ([{"name": "eth0", "bpf_filtre": "tcp"}], "interfaces[0].bpf_filtre"),
])
def test_interface_errors_name_the_index(interfaces, key):
    assert load_err({"interfaces": interfaces}).key == key


def test_interface_unknown_subkey_suggests():
    err = load_err({"interfaces": [{"name": "eth0", "bpf_filtre": "tcp"}]})
    assert "did you mean 'interfaces[0].bpf_filter'" in str(err)


# --- unknown keys -----------------------------------------------------------------------------

def test_unknown_key_suggests_closest(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_agent_config(write(tmp_path, "cache_limt: 5\n"))
    assert info.value.key == "cache_limt"
    assert "did you mean 'cache_limit'?" in str(info.value)


def test_unknown_key_without_close_match():
    err = load_err({"zzzzzz": 1})
    assert err.key == "zzzzzz" and "did you mean" not in str(err)


# --- collectors -------------------------------------------------------------------------------

@pytest.mark.parametrize("text,expected", [
    ("127.0.0.1:9999", ("127.0.0.1", 9999)),
    ("collector.example.org:2055", ("collector.example.org", 2055)),
    ("localhost:1", ("localhost", 1)),
    ("[2001:db8::1]:9999", ("2001:db8::1", 9999)),
    ("[::1]:65535", ("::1", 65535)),
    (["10.0.0.1", 53], ("10.0.0.1", 53)),
])
def test_collectors_parse(text, expected):
    assert load_agent_config(overrides={"collectors": [text]}).collectors == (expected,)


@pytest.mark.parametrize("text", [
    "::1", "2001:db8::1:9999", "127.0.0.1", "host:0", "host:65536", "host:abc", "host:",
    ":9999", "[2001:db8::1]", "[2001:db8::1]9999", "[zz::1]:5", "300.1.1.1:5", "bad host:5", 9999,
])
def test_collectors_reject(text):
    err = load_err({"collectors": ["10.0.0.1:1", text]})
    assert err.key == "collectors[1]"


def test_collectors_duplicates_rejected():
    assert load_err({"collectors": ["h:1", "h:1"]}).key == "collectors[1]"


# --- files and overrides ----------------------------------------------------------------------

@pytest.mark.parametrize("text", ["", "\n", "# only comments\n", "---\n"])
def test_empty_file_gives_defaults(tmp_path, text):
    assert load_agent_config(write(tmp_path, text)) == AgentConfig()


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n"])
def test_non_mapping_file(tmp_path, text):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_agent_config(path)
    assert info.value.key == path and "mapping" in str(info.value)


def test_missing_file_names_the_path(tmp_path):
    path = str(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError) as info:
        load_agent_config(path)
    assert info.value.key == path


def test_invalid_yaml_names_the_path(tmp_path):
    path = write(tmp_path, "cache_limit: [1, 2\n")
    with pytest.raises(ConfigError) as info:
        load_agent_config(path)
    assert info.value.key == path and "YAML" in str(info.value)


def test_overrides_beat_file_and_none_means_unset(tmp_path):
    path = write(tmp_path, "cache_limit: 10\nkey_file: /k\n")
    cfg = load_agent_config(path, {"cache_limit": 20, "key_file": None})
    assert cfg.cache_limit == 20 and cfg.key_file == "/k"
    with pytest.raises(ConfigError) as info:
        load_agent_config(path, {"cache_limt": 20})
    assert "cache_limit" in str(info.value)


def test_to_dict_is_plain_and_round_trips(tmp_path):
    cfg = load_agent_config(overrides={
        "interfaces": ["eth0", {"name": "eth1", "bpf_filter": "udp"}],
        "collectors": ["[2001:db8::1]:9999", "c.example:1"], "key_file": "/k"})
    plain = cfg.to_dict()
    assert plain["collectors"] == ["[2001:db8::1]:9999", "c.example:1"]
    assert plain["interfaces"][1] == {"name": "eth1", "bpf_filter": "udp"}
    text = yaml.safe_dump(plain)  # fails on tuples or dataclasses
    assert load_agent_config(write(tmp_path, text)) == cfg
    assert set(plain) == {f.name for f in dataclasses.fields(AgentConfig)}


# --- conf/agent.yaml --------------------------------------------------------------------------

def test_conf_agent_yaml_validates():
    # As shipped, every active line holds the default: the file is ready for replay as it is,
    # and what live capture and export need is commented out for the user to fill in.
    assert load_agent_config(str(AGENT_YAML)) == AgentConfig()


def test_conf_agent_yaml_documents_every_field():
    text = AGENT_YAML.read_text()
    missing = [f.name for f in dataclasses.fields(AgentConfig)
               if not re.search(r"^(# )?%s:" % re.escape(f.name), text, re.M)]
    assert missing == []
