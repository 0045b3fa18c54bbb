"""The collector's configuration: defaults, conf/collector.yaml in step, key-naming errors."""
import dataclasses
from pathlib import Path

import pytest

from myason.collector.config import CollectorConfig, load_collector_config
from myason.errors import ConfigError

CONF = Path(__file__).resolve().parents[3] / "conf" / "collector.yaml"


def test_shipped_file_loads_and_lists_every_key():
    cfg = load_collector_config(str(CONF))
    text = CONF.read_text()
    for f in dataclasses.fields(CollectorConfig):
        assert "\n%s:" % f.name in text or "\n# %s:" % f.name in text, f.name
    assert cfg.bind_port == 9999 and cfg.token_ttl == 5.0


def test_seed_keys_keep_working():
    cfg = load_collector_config(None, {"bind_address": "127.0.0.1", "bind_port": 5555,
                                       "processors_number": 2, "writers_number": 2, "token_ttl": 10})
    assert cfg.bind_address == ("127.0.0.1",) and cfg.processors_number == 2 and cfg.token_ttl == 10.0


@pytest.mark.parametrize("mode, number, processes", [
    ("auto", 1, False), ("auto", 2, True), ("thread", 2, False), ("process", 1, True)])
def test_processors_mode_auto_means_processes_when_there_are_several(mode, number, processes):
    cfg = load_collector_config(None, {"processors_mode": mode, "processors_number": number})
    assert cfg.process_mode is processes
    assert load_collector_config(None).process_mode is False      # the default: one thread


@pytest.mark.parametrize("overrides, key", [
    ({"processors_mode": "threads"}, "processors_mode"),
    ({"bind_port": 0}, "bind_port"),
    ({"bind_port": "x"}, "bind_port"),
    ({"token_ttl": -1}, "token_ttl"),
    ({"writers": []}, "writers"),
    ({"writers": [{"path": "x"}]}, "writers[0]"),
    ({"writers": [{"type": "mongo"}]}, "writers[0].type"),
    ({"writers": [{"type": "sqlite"}, {"type": "sqlite"}]}, "writers"),
    ({"spool_policy": "drop"}, "spool_policy"),
    ({"bind_address": []}, "bind_address"),
    ({"bind_adress": "x"}, "bind_adress"),
])
def test_errors_name_the_key(overrides, key):
    with pytest.raises(ConfigError) as exc:
        load_collector_config(None, overrides)
    assert str(exc.value).startswith(key + ":")


def test_round_trip_through_to_dict():
    cfg = load_collector_config(str(CONF))
    assert load_collector_config(None, cfg.to_dict()) == cfg
