"""tests/support/grafana.py: data-link expansion as Grafana's link service does it (link_srv.ts)."""
import datetime as dt

import pytest

from tests.support import grafana as g

UTC = dt.timezone.utc
START = dt.datetime(2026, 12, 7, 0, 0, tzinfo=UTC)
END = dt.datetime(2026, 12, 7, 1, 0, 0, 250000, tzinfo=UTC)


@pytest.mark.parametrize("text, want", [
    ("2001:db8::1", "2001:db8::1"),                       # encodeURI keeps : / ? # & = + $ , ; @
    ("net/10.0.0.0/8/", "net/10.0.0.0/8/"),
    ("a b", "a%20b"),
    ("x(y)!*'", "x%28y%29%21%2A%27"),                     # encodeURIStrict also escapes ! ' ( ) *
    ("%2F", "%252F"),                                     # a percent sign is encoded again
    ("é", "%C3%A9"),
])
def test_uri_encode_is_encode_uri_strict(text, want):
    assert g.uri_encode(text) == want


def test_date_formats_of_from_and_to():
    assert g.format_date(0, "iso") == "1970-01-01T00:00:00.000Z"
    assert g.format_date(1500, "iso") == "1970-01-01T00:00:01.500Z"
    assert g.format_date(1500, "seconds") == "1"
    assert g.format_date(1500, "") == "1500"
    with pytest.raises(g.GrafanaError):
        g.format_date(0, "YYYY")


def test_expand_link_fields_variables_and_time_range():
    variables = {"base": g.Variable("base", "http://h:8080"), "agents": g.Variable("agents", ["a", "b"], multi=True),
                 "clauses": g.Variable("clauses", "port/443/")}
    url = ('${base}/#q=host%2F${__data.fields.address}%2F${clauses}after%2F${__from:date:iso}%2Fbefore%2F'
           '${__to:date:iso}&p=${__data.fields["src port"]}&a=${agents}&r=${agents:raw}&u=$unknown')
    got = g.expand_link(url, variables, {"address": "2001:db8::1", "src port": "53"}, START, END)
    assert got == ("http://h:8080/#q=host%2F2001:db8::1%2Fport/443/after%2F2026-12-07T00:00:00.000Z%2Fbefore%2F"
                   "2026-12-07T01:00:00.250Z&p=53&a=%7Ba,b%7D&r=a,b&u=$unknown")
    with pytest.raises(KeyError):
        g.expand_link("${__data.fields.missing}", {}, {}, START, END)
    with pytest.raises(g.GrafanaError):
        g.expand_link("${__data.series}", {}, {}, START, END)
