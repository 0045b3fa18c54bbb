"""Issue 12 item 14: InfluxDB credentials travel in the Authorization header, never in a URL or a message.

A local HTTP server that answers like InfluxDB 1.x records every request the writer makes
(ping, CREATE DATABASE, retention policies, writes); the password must be in no request line
and in no body, and every request must carry it as HTTP Basic.
"""
import base64
import http.server
import threading
import urllib.parse

import pytest

from myason.errors import ConfigError
from myason.store import influxdb as ix
from myason.store.base import WriterError
from tests.support.rows import row_with

PASSWORD = "pa:ss w@rd/&p=1"


class Recorder(http.server.BaseHTTPRequestHandler):
    """Answers /ping 204, /query with an empty result, /write 204; records (method, path, headers, body)."""

    seen = None

    def _answer(self):
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n).decode("utf-8", "replace") if n else ""
        self.seen.append((self.command, self.path, dict(self.headers), body))
        if self.path.startswith("/query"):
            data = b'{"results":[{"statement_id":0,"series":[{"columns":["name","duration","shardGroupDuration",' \
                   b'"replicaN","default"],"values":[]}]}]}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        self.send_response(204)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_POST = _answer

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    seen = []
    handler = type("H", (Recorder,), {"seen": seen})
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield "http://127.0.0.1:%d" % srv.server_address[1], seen
    srv.shutdown()
    srv.server_close()


def basic(user, password):
    return "Basic " + base64.b64encode(("%s:%s" % (user, password)).encode()).decode()


def assert_private(seen, secret):
    encoded = {secret, urllib.parse.quote(secret), urllib.parse.quote_plus(secret)}
    for method, path, _headers, body in seen:
        for form in encoded:
            assert form not in path and form not in body, (method, path, body)
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(path).query)
        assert "p" not in query and "u" not in query, path


def test_username_and_password_go_in_a_basic_header(server, tmp_path):
    url, seen = server
    w = ix.InfluxDBWriter(url=url, username="writer", password=PASSWORD, retention="30d", interval=10,
                          state_file=str(tmp_path / "state"), fsync=False)
    w.write("b1", [row_with()])
    w.close()
    kinds = {(m, p.split("?")[0]) for m, p, _, _ in seen}
    assert {("GET", "/ping"), ("POST", "/query"), ("POST", "/write")} <= kinds
    assert all(h.get("Authorization") == basic("writer", PASSWORD) for _, _, h, _ in seen), seen
    assert_private(seen, PASSWORD)


def test_credentials_in_the_url_are_used_as_basic_and_never_printed(server, tmp_path):
    url, seen = server
    with_auth = url.replace("http://", "http://writer:%s@" % urllib.parse.quote(PASSWORD, safe=""))
    w = ix.InfluxDBWriter(url=with_auth, state_file=str(tmp_path / "state"), fsync=False)
    w.write("b1", [row_with()])
    assert all(h.get("Authorization") == basic("writer", PASSWORD) for _, _, h, _ in seen)
    assert_private(seen, PASSWORD)
    # A server that went away: the message names host and port, not the credentials.
    t = ix.V1Transport("http://writer:s3cret@127.0.0.1:1/", "myason", timeout=2)
    with pytest.raises(WriterError) as info:
        t.open()
    assert "127.0.0.1:1" in str(info.value) and "s3cret" not in str(info.value)


def test_token_header_and_no_mixing(server, tmp_path):
    url, seen = server
    w = ix.InfluxDBWriter(url=url, token="tok-123", state_file=str(tmp_path / "state"), fsync=False)
    w.write("b1", [row_with()])
    assert all(h.get("Authorization") == "Token tok-123" for _, _, h, _ in seen)
    assert_private(seen, "tok-123")
    with pytest.raises(ConfigError) as info:
        ix.InfluxDBWriter(url=url, token="t", username="u", password="p")
    assert info.value.key == "influxdb.token"


def test_bad_url_is_reported_without_credentials():
    with pytest.raises(ConfigError) as info:
        ix.InfluxDBWriter(url="ftp://u:s3cret@host:8086")
    assert "s3cret" not in str(info.value)


def test_endpoint_of_urls():
    assert ix.endpoint("http://u:p@h:8086/x?p=1") == "h:8086"
    assert ix.endpoint("https://[::1]:8086") == "[::1]:8086"
    assert ix.endpoint("http://h") == "h"
