"""One validation mechanism: every pluggable part and every daemon config rejects an unknown key by name."""
import pytest

from myason import options
from myason.detect import detector_class, detector_names
from myason.enrich import build_pipeline, enricher_class, enricher_names
from myason.errors import ConfigError
from myason.store.base import writer_class, writer_names

# The least each writer needs before it looks at its other options.
WRITER_MINIMUM = {"sqlite": {"path": "/nonexistent/x.db"}, "postgresql": {"dsn": "postgresql:///x"},
                  "influxdb": {"url": "http://127.0.0.1:1"}, "jsonl": {"dir": "/nonexistent"},
                  "mentat": {"queue_dir": "/nonexistent"},
                  "notify": {"state": "/nonexistent/notify.db", "rules": []}}


@pytest.mark.parametrize("name", writer_names())
def test_every_writer_names_an_unknown_option(name):
    cls = writer_class(name)
    assert set(WRITER_MINIMUM[name]) <= set(cls.SPEC), "each writer declares its options in SPEC"
    with pytest.raises(ConfigError) as exc:
        cls(**WRITER_MINIMUM[name], retention_dayz=3)
    assert exc.value.key == "%s.retention_dayz" % name


@pytest.mark.parametrize("name", writer_names())
def test_every_writer_names_a_wrong_type(name):
    cls = writer_class(name)
    key = next(k for k, (default, _) in cls.SPEC.items() if type(default) in (bool, int, float))
    with pytest.raises(ConfigError) as exc:
        cls(**WRITER_MINIMUM[name], **{key: "many"})
    assert exc.value.key == "%s.%s" % (name, key)


@pytest.mark.parametrize("name", detector_names())
def test_every_detector_names_an_unknown_option_and_a_wrong_type(name):
    cls = detector_class(name)
    with pytest.raises(ConfigError) as exc:
        cls({"thresold": 5})
    assert exc.value.key == "detect.%s.thresold" % name
    with pytest.raises(ConfigError) as exc:
        cls({"window": "5m"})
    assert exc.value.key == "detect.%s.window" % name


def test_every_enrich_key_belongs_to_one_step():
    owners = {}
    for name in enricher_names():
        for key in enricher_class(name).SPEC:
            assert key not in owners, "%s and %s both claim enrich.%s" % (owners[key], name, key)
            owners[key] = name
    with pytest.raises(ConfigError) as exc:
        build_pipeline({"local_network": ["10.0.0.0/8"]})
    assert exc.value.key == "enrich.local_network" and "local_networks" in str(exc.value)
    for key, value in (("direction_cache_size", "big"), ("services_file", 3), ("geoip", [1]), ("rdns", "on")):
        with pytest.raises(ConfigError) as exc:
            build_pipeline({key: value})
        assert exc.value.key == "enrich." + key
    with pytest.raises(ConfigError) as exc:
        build_pipeline({"rdns": {"enabled": True, "workers": 0}})
    assert exc.value.key == "enrich.rdns.workers"


def test_parse_options():
    spec = {"a": (options.REQUIRED, options.check_int(lo=1)), "b": ("x", options.check_choice("x", "y"))}
    assert options.parse_options("s", {"a": 2.0}, spec) == {"a": 2, "b": "x"}
    for given, key, text in (({}, "s.a", "required"), ({"a": 0}, "s.a", ">= 1"),
                             ({"a": 1, "b": "z"}, "s.b", "one of 'x', 'y'"),
                             ({"a": 1, "bb": 1}, "s.bb", "did you mean 'b'")):
        with pytest.raises(ConfigError) as exc:
            options.parse_options("s", given, spec)
        assert exc.value.key == key and text in str(exc.value)
    with pytest.raises(ConfigError):
        options.parse_options("s", ["a"], spec)
    assert options.check_items(options.check_int())("k", [1, 2.0]) == [1, 2]
    with pytest.raises(ConfigError) as exc:
        options.check_items(options.check_int())("k", [1, True])
    assert exc.value.key == "k[1]"
