"""Tests for myason.enrich: the registry, build_pipeline and Pipeline.enrich."""
import pytest

from myason.enrich import Enricher, Pipeline, build_pipeline, enricher_class, enricher_names, register
from myason.errors import ConfigError
from myason.schema import ENRICH_DEFAULTS, ENRICH_FIELDS, ROW_FIELDS

BASE = {"local_networks": ["10.0.0.0/8"], "services_file": None}


def _row(src="10.0.0.5", dst="93.184.216.34", sport=50000, dport=443, proto=6):
    values = {n: 0 for n in ROW_FIELDS}
    values.update(src_ip=src, dst_ip=dst, src_port=sport, dst_port=dport, proto=proto,
                  agent="a1", if_name="eth0", next_hop="", end_reason="idle", exporter="x")
    return [values[n] for n in ROW_FIELDS]


def test_fields_and_defaults():
    assert len(ENRICH_FIELDS) == len(ENRICH_DEFAULTS) == 10
    assert ENRICH_FIELDS[:8] == ("direction", "service", "src_country", "dst_country", "src_asn",
                                 "dst_asn", "src_as_org", "dst_as_org")     # geoip's fixed slots
    assert not set(ENRICH_FIELDS) & set(ROW_FIELDS)
    assert dict(zip(ENRICH_FIELDS, ENRICH_DEFAULTS))["src_asn"] == 0


def test_default_order_skips_unconfigured_steps():
    pipe = build_pipeline(BASE)
    assert pipe.names == ["direction", "service"]           # geoip unset, rdns off
    assert build_pipeline({}).names == ["service"]
    assert enricher_names()[:4] == ["direction", "geoip", "rdns", "service"]


def test_enrich_extends_rows_in_place():
    pipe = build_pipeline(BASE)
    rows = [_row(), _row("93.184.216.34", "10.0.0.5", 443, 50000), _row("10.0.0.1", "10.0.0.2",
                                                                         40000, 53, 17)]
    ids = [id(r) for r in rows]
    assert pipe.enrich(rows) is rows and [id(r) for r in rows] == ids
    n = len(ROW_FIELDS)
    assert all(len(r) == n + len(ENRICH_FIELDS) for r in rows)
    assert [r[n:n + 2] for r in rows] == [["outbound", "https"], ["inbound", "https"],
                                          ["internal", "domain"]]
    assert rows[0][n + 2:] == list(ENRICH_DEFAULTS[2:])
    assert pipe.enrich([]) == []


def test_order_is_respected_and_custom_steps_register():
    @register
    class Upper(Enricher):
        name = "test_upper_service"

        def apply(self, row, out):
            out[1] = out[1].upper()

    try:
        rows = build_pipeline(dict(BASE, order=["service", "test_upper_service"])).enrich([_row()])
        assert rows[0][len(ROW_FIELDS) + 1] == "HTTPS"
        rows = build_pipeline(dict(BASE, order=["test_upper_service", "service"])).enrich([_row()])
        assert rows[0][len(ROW_FIELDS) + 1] == "https"
        assert enricher_class("test_upper_service") is Upper
        with pytest.raises(ValueError):
            register(type("Other", (Enricher,), {"name": "test_upper_service"}))
    finally:
        from myason.enrich import base
        base._REGISTRY.pop("test_upper_service", None)


def test_a_failing_step_keeps_defaults_and_counts():
    class Boom(Enricher):
        name = "boom"

        def apply(self, row, out):
            raise RuntimeError("bad row")

    pipe = Pipeline([Boom()])
    rows = pipe.enrich([_row(), _row()])
    assert pipe.errors == 2 and rows[0][len(ROW_FIELDS):] == list(ENRICH_DEFAULTS)


@pytest.mark.parametrize("config,key", [
    ({"order": ["direction", "nope"]}, "enrich.order"),
    ({"order": "direction"}, "enrich.order"),
    ({"order": ["service", "service"]}, "enrich.order"),
    ({"local_networks": ["x"]}, "enrich.local_networks"),
])
def test_bad_config(config, key):
    with pytest.raises(ConfigError) as info:
        build_pipeline(config)
    assert info.value.key == key
    with pytest.raises(KeyError):
        enricher_class("nope")
