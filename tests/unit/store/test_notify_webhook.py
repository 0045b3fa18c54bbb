"""Webhooks: the signature (a vector computed with openssl), the secret file checks, URL checks,
the backoff schedule, and each answer's outcome against a real HTTP receiver on loopback."""
import pytest

from myason.errors import ConfigError
from myason.store.notify import signing
from myason.store.notify.webhook import Webhook
from tests.support.receivers import SECRET, WebhookReceiver, unused_tcp_port, verify, write_secret


def test_signature_vector():
    # printf '1700000000.{"ID":"x"}' | openssl dgst -sha256 -hmac 'myason-test-secret-0123456789'
    assert signing.signature(b"myason-test-secret-0123456789", 1700000000, b'{"ID":"x"}') == (
        "sha256=7331531ac7b8b562d6619c6a73854ecb11172af046eea095be51a57e6d66fdc9")


def test_headers_carry_timestamp_signature_and_idempotency_key():
    body = b'{"ID":"e-1"}'
    h = signing.headers(SECRET, "scans", "e-1", body, 1700000123)
    assert h["Idempotency-Key"] == "scans:e-1" and h["X-Myason-Rule"] == "scans"
    assert h["X-Myason-Timestamp"] == "1700000123"
    assert verify(SECRET, h, body, now=1700000123)
    assert not verify(SECRET, h, body + b" ", now=1700000123)            # body changed
    assert not verify(SECRET, h, body, now=1700000123 + 301)             # replayed too late
    assert not verify(b"another-secret-of-enough-length", h, body, now=1700000123)


def test_secret_file_checks(tmp_path):
    good = write_secret(tmp_path / "s")
    assert signing.read_secret("k", str(good)) == SECRET
    for path, text in ((tmp_path / "missing", "cannot open"), (write_secret(tmp_path / "open", mode=0o640), "chmod 600"),
                       (write_secret(tmp_path / "short", b"short"), "secret of 16"), (tmp_path, "not a regular file")):
        with pytest.raises(ConfigError) as exc:
            signing.read_secret("notify.webhooks.soc.secret_file", str(path))
        assert exc.value.key == "notify.webhooks.soc.secret_file" and text in str(exc.value)
        assert "0123456789" not in str(exc.value)          # the secret is never echoed


@pytest.mark.parametrize("url", ["ftp://x.example/", "http://", "127.0.0.1:8080/hook", "http://u:p@x.example/",
                                 "http://x.example:99999/", "http://x.example/a b", 42])
def test_bad_urls_name_the_key(tmp_path, url):
    with pytest.raises(ConfigError) as exc:
        Webhook("notify.webhooks.soc", {"url": url, "secret_file": str(write_secret(tmp_path / "s"))})
    assert exc.value.key == "notify.webhooks.soc.url"


def test_backoff_schedule_doubles_up_to_the_cap(tmp_path):
    hook = Webhook("notify.webhooks.soc", {"url": "https://x.example/h", "secret_file": str(write_secret(tmp_path / "s")),
                                           "backoff_min": 0.5, "backoff_max": 5})
    assert [hook.backoff(n) for n in range(1, 8)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0]
    assert hook.backoff(10 ** 6) == 5.0
    with pytest.raises(ConfigError) as exc:
        Webhook("notify.webhooks.soc", {"url": "https://x.example/h", "secret_file": str(tmp_path / "s"),
                                        "backoff_min": 10, "backoff_max": 5})
    assert exc.value.key == "notify.webhooks.soc.backoff_max"


@pytest.mark.parametrize("status, outcome", [(500, "retry"), (503, "retry"), (429, "retry"), (408, "retry"),
                                             (404, "refused"), (400, "refused"), (301, "retry")])
def test_answers_and_their_outcome(tmp_path, status, outcome):
    with WebhookReceiver(fail_first=1, fail_status=status) as rx:
        hook = Webhook("notify.webhooks.soc", {"url": rx.url, "secret_file": str(write_secret(tmp_path / "s"))})
        assert hook.post("r", "e-1", b'{"ID":"e-1"}', 1700000000)[0] == outcome
        assert hook.post("r", "e-1", b'{"ID":"e-1"}', 1700000000) == ("ok", "HTTP 200")
    first = rx.requests[0]
    assert first["path"] == "/hooks/myason" and first["body"] == b'{"ID":"e-1"}'
    assert verify(SECRET, first["headers"], first["body"], now=1700000000)


def test_connection_refused_is_retried(tmp_path):
    hook = Webhook("notify.webhooks.soc", {"url": "http://127.0.0.1:%d/" % unused_tcp_port(),
                                           "secret_file": str(write_secret(tmp_path / "s")), "timeout": 2})
    outcome, detail = hook.post("r", "e-1", b"{}", 1700000000)
    assert outcome == "retry" and "ConnectionRefused" in detail
