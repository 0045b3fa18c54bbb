"""The Prometheus endpoint reads the daemon's stats at scrape time."""
import socket
import urllib.request

from myason.metrics import flatten, serve


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_flatten_turns_nested_dicts_into_labels():
    got = flatten({"datagrams": 5, "rejects": {"bad_token": 3}, "agents": {"a1": {"gaps": 2, "name": "x"}},
                   "ok": True})
    assert ("myason_datagrams", {}, 5) in got
    assert ("myason_rejects", {"key": "bad_token"}, 3) in got
    assert ("myason_agents_gaps", {"key": "a1"}, 2) in got
    assert len(got) == 3


def test_endpoint_serves_current_values():
    state = {"datagrams": 1, "rejects": {"replay": 4}, "spool": {"pg": {"waiting": 7}}}
    port = free_port()
    server, thread = serve("127.0.0.1:%d" % port, lambda: state, gauges=("spool",))
    try:
        body = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=5).read().decode()
        assert "myason_datagrams_total 1.0" in body
        assert 'myason_rejects_total{key="replay"} 4.0' in body
        assert 'myason_spool_waiting{key="pg"} 7.0' in body
        state["datagrams"] = 9
        body = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=5).read().decode()
        assert "myason_datagrams_total 9.0" in body
    finally:
        server.shutdown()
