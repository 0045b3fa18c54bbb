"""HTTP transports: InfluxDB 1.x /write (stdlib http.client) and the v2 API (influxdb-client)."""
import base64
import http.client
import json
import urllib.parse

from myason.errors import ConfigError
from myason.redact import redact_text
from myason.store.base import WriterError


def status_error(status, text):
    # A 400 (unparsable line, field type conflict, partial write) or 413 comes back the same
    # however often the batch is retried; anything else (5xx, auth, missing database) can
    # heal while the batch waits in the spool.
    permanent = status in (400, 413, 422)
    return WriterError("InfluxDB answered HTTP %d: %s" % (status, text[:300].strip()), permanent=permanent)


def endpoint(url):
    """host:port of a URL, for messages: never the user and password a URL may carry."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
        host = parts.hostname or ""
    except ValueError:
        return "(unparsable URL)"
    host = "[%s]" % host if ":" in host else host
    return "%s:%d" % (host, port) if port else host


def basic_auth(username, password):
    """The Authorization header value of HTTP Basic authentication (RFC 7617, UTF-8)."""
    pair = "%s:%s" % (username, password or "")
    return "Basic " + base64.b64encode(pair.encode("utf-8")).decode("ascii")


class V1Transport:
    """InfluxDB 1.x HTTP API: POST /write?db=...&precision=ns, one kept-alive connection.

    Credentials travel in the Authorization header only, never in a URL (which servers and
    proxies log): username/password (also from the URL's user:password@) as HTTP Basic, which
    InfluxDB accepts since 1.0, or a token as `Token ...` (InfluxDB 1.8+ and 2.x compatibility).
    """

    def __init__(self, url, database, token=None, username=None, password=None, timeout=10.0,
                 create_database=True, rp=None):
        try:
            parts = urllib.parse.urlsplit(url)
            parts.port      # noqa: B018 - reading it validates the port (ValueError)
        except ValueError:
            parts = None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError("influxdb.url", "must be http://host:port or https://host:port, got %r" % endpoint(url))
        if parts.username is not None and username is None:
            username = urllib.parse.unquote(parts.username)
            password = urllib.parse.unquote(parts.password or "") if password is None else password
        if token and username:
            raise ConfigError("influxdb.token", "give either a token (token, token_file) or username and password, not both")
        self.parts = parts
        self.where = endpoint(url)
        self.database = database
        self.timeout = timeout
        self.create_database = create_database
        self.headers = {"Content-Type": "text/plain; charset=utf-8"}
        if token:
            self.headers["Authorization"] = "Token " + token
        elif username:
            self.headers["Authorization"] = basic_auth(username, password)
        query = {"db": database, "precision": "ns"}
        if rp:
            query["rp"] = rp
        base = parts.path.rstrip("/")
        self.write_path = base + "/write?" + urllib.parse.urlencode(query)
        self.query_path = base + "/query"
        self.conn = None

    def _request(self, method, path, body=None, headers=None):
        if self.conn is None:
            cls = http.client.HTTPSConnection if self.parts.scheme == "https" else http.client.HTTPConnection
            self.conn = cls(self.parts.hostname, self.parts.port, timeout=self.timeout)
        try:
            self.conn.request(method, path, body=body, headers=headers or self.headers)
            resp = self.conn.getresponse()
            text = resp.read().decode("utf-8", "replace")
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            raise WriterError("InfluxDB at %s unreachable: %s" % (self.where, exc)) from None
        return resp.status, text

    def open(self):
        """Check the server answers; create the database (idempotent) when asked to."""
        status, text = self._request("GET", self.parts.path.rstrip("/") + "/ping")
        if status >= 300:
            raise status_error(status, text)
        if self.create_database:
            query = {"q": 'CREATE DATABASE "%s"' % self.database.replace('"', '\\"')}
            headers = dict(self.headers, **{"Content-Type": "application/x-www-form-urlencoded"})
            status, text = self._request("POST", self.query_path, urllib.parse.urlencode(query), headers)
            if status >= 300:
                raise status_error(status, text)

    def send(self, lines):
        """Write line protocol lines; WriterError on failure."""
        status, text = self._request("POST", self.write_path, "\n".join(lines).encode())
        if status >= 300:
            raise status_error(status, text)

    def query(self, q):
        """Run one InfluxQL statement (POST /query) and return the parsed answer; WriterError on error."""
        body = urllib.parse.urlencode({"q": q, "db": self.database})
        headers = dict(self.headers, **{"Content-Type": "application/x-www-form-urlencoded"})
        status, text = self._request("POST", self.query_path, body, headers)
        if status >= 300:
            raise status_error(status, text)
        try:
            answer = json.loads(text)
        except ValueError:
            raise WriterError("InfluxDB answered %r to %s" % (text[:200], q)) from None
        errors = [r["error"] for r in answer.get("results", []) if r.get("error")] + (
            [answer["error"]] if answer.get("error") else [])
        if errors:
            # Refused statements (bad duration, no permission) do not heal by retrying.
            raise WriterError("InfluxDB refused %s: %s" % (q, errors[0]), permanent=True)
        return answer

    def close(self):
        """Drop the connection."""
        if self.conn is not None:
            self.conn.close()
            self.conn = None


class V2Transport:
    """influxdb-client's synchronous write API (InfluxDB 2.x/3.x, 1.8+, VictoriaMetrics)."""

    def __init__(self, url, bucket, org="", token=None, timeout=10.0):
        self.url, self.bucket, self.org, self.token = url, bucket, org, token
        self.where = endpoint(url)
        self.timeout = timeout
        self.client = self.api = None

    def open(self):
        """Create the client and check that the server answers /ping."""
        try:
            from influxdb_client import InfluxDBClient
            from influxdb_client.client.write_api import SYNCHRONOUS
        except ModuleNotFoundError:
            raise ConfigError("influxdb.api", "api 'v2' needs the influxdb-client package") from None
        if self.client is None:
            self.client = InfluxDBClient(url=self.url, token=self.token or "", org=self.org,
                                         timeout=int(self.timeout * 1000))
            self.api = self.client.write_api(write_options=SYNCHRONOUS)
        if not self.client.ping():
            raise WriterError("InfluxDB at %s does not answer /ping" % self.where)

    def send(self, lines):
        """Write line protocol lines; WriterError on failure."""
        from influxdb_client.rest import ApiException
        from urllib3.exceptions import HTTPError
        try:
            self.api.write(bucket=self.bucket, org=self.org, record="\n".join(lines), write_precision="ns")
        except ApiException as exc:
            raise status_error(exc.status or 0, str(exc.body or exc.reason)) from None
        except (HTTPError, OSError) as exc:
            raise WriterError("InfluxDB at %s unreachable: %s" % (self.where, redact_text(str(exc)))) from None

    def close(self):
        """Close the client."""
        if self.client is not None:
            self.client.close()
            self.client = self.api = None


