"""The notify writer and its dispatcher, stepped on a fake clock against real receivers on loopback:
batches taken in once, retries with backoff, a dead receiver probed once per backoff, give-up rules,
the bounded outbox, digest windows, the mail rate limit, and a restart resuming from the state file."""
import re
from pathlib import Path

import pytest
import yaml

from myason.errors import ConfigError
from myason.store.base import writer_class
from myason.store.notify.dispatch import _try_lock
from myason.store.notify.state import State
from tests.support.receivers import SECRET, SmtpReceiver, WebhookReceiver, unused_tcp_port, verify, write_secret

T0 = 1_800_000_000.0
ROOT = Path(__file__).resolve().parents[3]


def ev(n, category="Recon.Scanning", source="203.0.113.%d"):
    return {"Format": "IDEA0", "ID": "event-%03d" % n, "DetectTime": "2027-01-15T08:00:%02dZ" % (n % 60),
            "Category": [category], "Description": "Event %d" % n, "Source": [{"IP4": [source % (n % 250 + 1)]}],
            "Target": [{"IP4": ["10.0.0.1"]}], "Node": [{"Name": "org.example.test"}]}


def make(tmp_path, url=None, smtp_port=None, hook=None, rule=None, mail=None, **options):
    secret = write_secret(tmp_path / "secret")
    conf = {"state": str(tmp_path / "notify.db"), **options}
    rule = dict(rule or {}, name="r1")
    if url:
        conf["webhooks"] = {"soc": {"url": url, "secret_file": str(secret), "backoff_min": 1, "backoff_max": 8,
                                    **(hook or {})}}
        rule.setdefault("webhooks", ["soc"])
    if smtp_port:
        conf["mail"] = {"host": "127.0.0.1", "port": smtp_port, "sender": "myason@example.org", "timeout": 5, **(mail or {})}
    conf["rules"] = [rule]
    w = writer_class("notify")(**conf)
    w.clock = lambda: T0
    # The thread stays off: the tests step the dispatcher on their own clock.
    w.dispatcher.start = lambda: None
    w.open()
    return w, State(conf["state"])


def step(w, state, now):
    w.dispatcher.clock = lambda: now
    return w.dispatcher.step(state, now)


def test_a_batch_is_taken_in_once(tmp_path):
    w, state = make(tmp_path, url="http://127.0.0.1:9/", rule={"category": ["Recon"]})
    assert w.write("b1", [], events=[ev(1), ev(2, "Attempt.Login")]) is True
    assert w.write("b1", [], events=[ev(1), ev(2, "Attempt.Login")]) is False       # a retried batch
    assert w.write("b2", [], events=[ev(1)]) is True            # the same event again: one delivery
    assert state.pending() == 1 and w.skipped == 1
    assert w.write("b3", [[1, 2, 3]]) is True                   # rows only: nothing to do
    assert w.write("b4", [], events=[{"no": "id"}]) is True and w.bad_events == 1
    w.close()


def test_retries_with_backoff_then_delivered(tmp_path):
    with WebhookReceiver(fail_first=2) as rx:
        w, state = make(tmp_path, url=rx.url)
        w.write("b1", [], events=[ev(1)])
        assert step(w, state, T0) == T0 + 1                    # first attempt failed: again in 1 s
        assert step(w, state, T0 + 0.5) == T0 + 1 and len(rx.requests) == 1
        assert step(w, state, T0 + 1) == T0 + 1 + 2             # second failed: 2 s
        assert step(w, state, T0 + 3) is None                   # delivered
    assert [r["status"] for r in rx.requests] == [500, 500, 200]
    keys = {r["headers"]["Idempotency-Key"] for r in rx.requests}
    assert keys == {"r1:event-001"}
    assert all(verify(SECRET, r["headers"], r["body"], now=int(r["headers"]["X-Myason-Timestamp"])) for r in rx.requests)
    assert [r["headers"]["X-Myason-Timestamp"] for r in rx.requests] == [str(int(T0)), str(int(T0 + 1)), str(int(T0 + 3))]
    assert state.counters() == {"webhook_failed_attempts": 2, "webhook_delivered": 1}
    assert state.pending() == 0
    w.close()


def test_a_dead_receiver_is_probed_once_per_backoff_and_others_wait(tmp_path):
    w, state = make(tmp_path, url="http://127.0.0.1:%d/" % unused_tcp_port(), hook={"timeout": 2})
    w.write("b1", [], events=[ev(i) for i in range(5)])
    assert step(w, state, T0) == T0 + 1
    assert state.counters()["webhook_failed_attempts"] == 1        # one probe, not five
    assert step(w, state, T0 + 1) == T0 + 3
    assert state.counters()["webhook_failed_attempts"] == 2 and state.pending() == 5
    w.close()


def test_refused_and_expired_deliveries_are_given_up_and_counted(tmp_path):
    with WebhookReceiver(fail_first=1, fail_status=422) as rx:
        w, state = make(tmp_path, url=rx.url, hook={"give_up_after": 10})
        w.write("b1", [], events=[ev(1)])
        step(w, state, T0)
        assert state.counters() == {"webhook_refused": 1} and state.pending() == 0
        rx.fail_first, rx.fail_status = 100, 503
        w.write("b2", [], events=[ev(2)])
        step(w, state, T0)
        step(w, state, T0 + 10)
        assert state.counters()["webhook_expired"] == 1 and state.pending() == 0
        w.close()


def test_the_outbox_keeps_the_newest_when_full(tmp_path):
    w, state = make(tmp_path, url="http://127.0.0.1:9/", outbox_max=3)
    w.write("b1", [], events=[ev(i) for i in range(5)])
    assert [d[3] for d in state.due_deliveries(T0)] == ["event-002", "event-003", "event-004"]
    assert state.counters() == {"webhook_dropped_outbox_full": 2}
    w.close()


def test_a_restart_resumes_pending_deliveries(tmp_path):
    port = unused_tcp_port()
    w, state = make(tmp_path, url="http://127.0.0.1:%d/h" % port, hook={"timeout": 2})
    w.write("b1", [], events=[ev(1), ev(2)])
    step(w, state, T0)                                          # receiver down
    w.close()
    state.close()
    with WebhookReceiver(port=port) as rx:
        w, state = make(tmp_path, url=rx.url)                  # a new writer on the same file
        assert w.write("b1", [], events=[ev(1), ev(2)]) is False
        step(w, state, T0 + 1)
        w.close()
    assert sorted(r["headers"]["Idempotency-Key"] for r in rx.requests) == ["r1:event-001", "r1:event-002"]
    assert all(verify(SECRET, r["headers"], r["body"], now=T0 + 1) for r in rx.requests)


def test_one_dispatcher_per_state_file(tmp_path):
    fd = _try_lock(str(tmp_path / "s.lock"))
    assert fd is not None and _try_lock(str(tmp_path / "s.lock")) is None


def test_digest_windows_one_mail_per_window(tmp_path):
    with SmtpReceiver() as smtp:
        w, state = make(tmp_path, smtp_port=smtp.port, rule={"mail": {"to": ["soc@example.org"], "window": 60}})
        w.write("b1", [], events=[ev(1)])
        w.clock = lambda: T0 + 10
        w.write("b2", [], events=[ev(2), ev(3)])
        assert step(w, state, T0 + 59) == T0 + 60 and smtp.mails == []
        assert step(w, state, T0 + 60) is None
        w.clock = lambda: T0 + 70
        w.write("b3", [], events=[ev(4)])
        assert step(w, state, T0 + 100) == T0 + 130
        step(w, state, T0 + 130)
        w.close()
    mails = smtp.mails
    assert len(mails) == 2 and mails[0]["to"] == ["soc@example.org"] and mails[0]["from"] == "myason@example.org"
    first = mails[0]["body"]
    assert [line.split("[")[-1] for line in first.splitlines() if "[event-" in line] == [
        "event-001]", "event-002]", "event-003]"]
    assert "203.0.113.2 -> 10.0.0.1  Event 1  [event-001]" in first
    assert "Rule r1: 3 events" in first and "r1: 3 events" in mails[0]["message"]["Subject"]
    assert "[event-004]" in mails[1]["body"] and "event-001" not in mails[1]["body"]
    assert state.counters() == {"mail_sent": 2, "mail_events": 4}


def test_rate_limit_folds_windows_into_the_next_mail(tmp_path):
    with SmtpReceiver() as smtp:
        w, state = make(tmp_path, smtp_port=smtp.port,
                        rule={"mail": {"to": ["soc@example.org"], "window": 60, "max_mails": 2, "per": 3600}})
        for k in range(4):                      # windows opened at T0, T0+100, T0+200, T0+300
            w.clock = lambda k=k: T0 + 100 * k
            w.write("b%d" % k, [], events=[ev(k)])
            step(w, state, T0 + 100 * k + 60)
        assert len(smtp.mails) == 2
        assert state.counters()["mail_rate_limited"] == 1
        # Held back until the first mail leaves the hour; both late windows go out in one mail.
        assert step(w, state, T0 + 3659) == T0 + 60 + 3600
        step(w, state, T0 + 3660)
        w.close()
    mails = smtp.mails
    assert len(mails) == 3
    assert "[event-002]" in mails[2]["body"] and "[event-003]" in mails[2]["body"]
    assert "held this digest back 1 time" in mails[2]["body"]
    assert state.counters()["mail_sent"] == 3


def test_a_failed_send_is_retried(tmp_path):
    port = unused_tcp_port()
    w, state = make(tmp_path, smtp_port=port, rule={"mail": {"to": ["soc@example.org"], "window": 5}})
    w.write("b1", [], events=[ev(1)])
    assert step(w, state, T0 + 5) == T0 + 6                      # refused: again in 1 s
    with SmtpReceiver(port=port) as smtp:
        step(w, state, T0 + 6)
    assert len(smtp.mails) == 1 and state.counters()["mail_failed_attempts"] == 1
    w.close()


def test_writer_config_errors_name_the_key(tmp_path):
    secret = str(write_secret(tmp_path / "secret"))
    hook = {"url": "http://127.0.0.1:9/", "secret_file": secret}
    base = {"state": str(tmp_path / "n.db"), "webhooks": {"soc": hook}, "rules": [{"name": "r", "webhooks": ["soc"]}]}
    cases = [({"webhooks": {"soc": dict(hook, secret_file=str(tmp_path / "nope"))}}, "notify.webhooks.soc.secret_file"),
             ({"webhooks": {"soc": dict(hook, url="mailto:x@y")}}, "notify.webhooks.soc.url"),
             ({"webhooks": {"soc": dict(hook, retries=3)}}, "notify.webhooks.soc.retries"),
             ({"webhooks": {"soc": hook, "unused": hook}}, "notify.webhooks.unused"),
             ({"mail": {"host": "127.0.0.1"}}, "notify.mail.sender"),
             ({"mail": {"host": "127.0.0.1", "sender": "a@b.example", "username": "u"}}, "notify.mail.username"),
             ({"rules": "all"}, "notify.rules"),
             ({"outbox_max": 0}, "notify.outbox_max")]
    for change, key in cases:
        with pytest.raises(ConfigError) as exc:
            writer_class("notify")(**dict(base, **change))
        assert exc.value.key == key, change


def _examples():
    """The notify writer examples of conf/collector.yaml (commented out) and docs/notifier.md."""
    conf = (ROOT / "conf" / "collector.yaml").read_text()
    block = re.search(r"^# - type: notify.*?(?=^# - type|^# Threads)", conf, re.S | re.M).group(0)
    yield yaml.safe_load("\n".join(line[2:] if line.startswith("# ") else line[1:] for line in block.splitlines()))[0]
    doc = (ROOT / "docs" / "notifier.md").read_text()
    yield yaml.safe_load(re.search(r"```yaml\n(.*?)```", doc, re.S).group(1))["writers"][0]


@pytest.mark.parametrize("example", list(_examples()), ids=["conf", "docs"])
def test_the_shipped_examples_are_valid(tmp_path, example):
    secret = str(write_secret(tmp_path / "secret"))
    example = dict(example, state=str(tmp_path / "n.db"))
    example.pop("type")
    example["webhooks"] = {k: dict(v, secret_file=secret) for k, v in example["webhooks"].items()}
    w = writer_class("notify")(**example)
    assert [r.name for r in w.rules] == [r["name"] for r in example["rules"]]


def test_a_window_whose_rule_sends_no_mail_any_more_is_dropped_and_counted(tmp_path):
    w, state = make(tmp_path, smtp_port=unused_tcp_port(), rule={"mail": {"to": ["soc@example.org"], "window": 5}})
    w.write("b1", [], events=[ev(1), ev(2)])
    w.close()
    w, state = make(tmp_path, url="http://127.0.0.1:9/")        # the same rule, now webhooks only
    assert step(w, state, T0 + 5) is None
    assert state.counters() == {"mail_dropped_unknown_rule": 2}
    w.close()


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")     # loopback only
def test_smtp_auth_with_a_password_file(tmp_path):
    password = tmp_path / "smtp.password"
    write_secret(password, b"s3cret")
    with SmtpReceiver(auth=("myason", "s3cret")) as smtp:
        for user, sent in (("myason", 1), ("intruder", 1)):
            (tmp_path / user).mkdir()
            w, state = make(tmp_path / user, smtp_port=smtp.port, rule={"mail": {"to": ["soc@example.org"], "window": 5}},
                            # A refused login leaves smtplib waiting for its timeout (aiosmtpd after a
                            # failed AUTH PLAIN, smtplib trying LOGIN): keep it short.
                            mail={"username": user, "password_file": str(password), "timeout": 0.5})
            w.write("b1", [], events=[ev(1)])
            step(w, state, T0 + 5)
            assert len(smtp.mails) == sent
            w.close()
    assert smtp.logins == [("myason", "s3cret"), ("intruder", "s3cret")]
    assert state.counters() == {"mail_failed_attempts": 1}
