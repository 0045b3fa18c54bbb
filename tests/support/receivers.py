"""Real receivers for the notifier's tests: an HTTP webhook receiver on loopback that checks each
request's signature the way docs/notifier.md tells receivers to (written here from that recipe,
not taken from myason), and an SMTP server on loopback (aiosmtpd) that keeps every mail."""
import email
import email.policy
import hashlib
import hmac
import http.server
import socket
import threading
import time

SECRET = b"myason-test-webhook-secret-0123456789"


def write_secret(path, secret=SECRET, mode=0o600):
    """The secret file the notifier reads (mode 0600 unless told otherwise)."""
    path.write_bytes(secret + b"\n")
    path.chmod(mode)
    return path


def verify(secret, headers, body, now=None, tolerance=300):
    """The receiver's check (docs/notifier.md): fresh timestamp, HMAC-SHA256 over '<ts>.' + body."""
    ts = headers.get("X-Myason-Timestamp", "")
    if not ts.isdigit() or abs((now or time.time()) - int(ts)) > tolerance:
        return False
    expected = "sha256=" + hmac.new(secret, ts.encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, headers.get("X-Myason-Signature", ""))


class WebhookReceiver:
    """A ThreadingHTTPServer on 127.0.0.1 that records every POST and answers per a plan.

    fail_first: the first N requests get `fail_status` (then 200). Each record is a dict: time,
    path, headers, body, status, valid (signature checked with `secret`).
    """

    def __init__(self, port=0, secret=SECRET, fail_first=0, fail_status=500):
        self.secret, self.fail_first, self.fail_status = secret, fail_first, fail_status
        self.requests = []
        self._lock = threading.Lock()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                headers = dict(self.headers.items())
                with outer._lock:
                    status = outer.fail_status if len(outer.requests) < outer.fail_first else 200
                    outer.requests.append({"time": time.time(), "path": self.path, "headers": headers, "body": body,
                                           "status": status, "valid": verify(outer.secret, headers, body)})
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = "http://127.0.0.1:%d/hooks/myason" % self.port
        # A short poll interval: shutdown() waits for the loop to see it.
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    def delivered(self):
        """The requests answered 200, in arrival order."""
        with self._lock:
            return [r for r in self.requests if r["status"] == 200]

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def unused_tcp_port():
    """A loopback TCP port nothing listens on right now (connections to it are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Keeper:
    """aiosmtpd handler (its handler protocol: an object with handle_DATA) that keeps every mail."""

    def __init__(self):
        self.mails = []
        self.lock = threading.Lock()

    async def handle_DATA(self, server, session, envelope):
        msg = email.message_from_bytes(envelope.original_content or envelope.content, policy=email.policy.default)
        with self.lock:
            self.mails.append({"from": envelope.mail_from, "to": list(envelope.rcpt_tos), "message": msg,
                               "body": msg.get_content()})
        return "250 OK"


class SmtpReceiver:
    """A real SMTP server (aiosmtpd's Controller, wrapped) on 127.0.0.1, without TLS.

    auth: (user, password): AUTH is then required (allowed without TLS, on loopback only).
    """

    def __init__(self, port=0, auth=None):
        from aiosmtpd.controller import Controller
        from aiosmtpd.smtp import AuthResult
        self._keeper = _Keeper()
        self.port = port or unused_tcp_port()
        self.logins = []

        def authenticator(server, session, envelope, mechanism, data):
            self.logins.append((data.login.decode(), data.password.decode()))
            return AuthResult(success=(data.login.decode(), data.password.decode()) == auth)

        extra = {"authenticator": authenticator, "auth_required": True, "auth_require_tls": False} if auth else {}
        self._controller = Controller(self._keeper, hostname="127.0.0.1", port=self.port, **extra)

    @property
    def mails(self):
        """Every mail received so far: {from, to, message (email.message.EmailMessage), body}."""
        with self._keeper.lock:
            return list(self._keeper.mails)

    def __enter__(self):
        self._controller.start()
        return self

    def __exit__(self, *exc):
        self._controller.stop()
