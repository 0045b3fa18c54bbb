"""myason.api.protocol against a real uvicorn server in this process (loopback, small timeouts):
the wrapper forwards everything to uvicorn's protocol (pipelined requests, bodies, 100-continue),
and applies the header timeout and the connection cap from what it sees itself. The same bounds
against a real `myason api` process: tests/integration/test_api_hardening.py."""
import asyncio
import json
import socket
import time

import pytest
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from myason.api.protocol import ConnectionGuard, GuardedConnection


async def echo_app(scope, receive, send):
    """Answers the method, the path and the body it read; /slow answers after 0.8 s. WebSocket: accepts."""
    if scope["type"] == "websocket":
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})
        await receive()
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    if scope["path"] == "/slow":
        await asyncio.sleep(0.8)
    out = json.dumps({"method": scope["method"], "path": scope["path"], "body": body.decode()}).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(out))]})
    await send({"type": "http.response.body", "body": out})


def serve(test, guard):
    """Runs `test(port)` (a coroutine) against a uvicorn server using `guard`, then stops the server."""

    async def main():
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        server = uvicorn.Server(uvicorn.Config(echo_app, http=guard, log_config=None, lifespan="off",
                                               timeout_keep_alive=5, h11_max_incomplete_event_size=2048))
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            assert not task.done(), task.result()
            await asyncio.sleep(0.01)
        try:
            await test(sock.getsockname()[1])
        finally:
            server.should_exit = True
            await asyncio.wait_for(task, 10)
            sock.close()

    asyncio.run(main())


async def connect(port):
    return await asyncio.open_connection("127.0.0.1", port)


async def read_response(reader):
    """(status, headers, body) of the next response on `reader` (content-length framing)."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    lines = head.decode().split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:] if line)
    body = await asyncio.wait_for(reader.readexactly(int(headers.get("content-length", 0))), 5)
    return int(lines[0].split()[1]), headers, body


async def read_json(reader):
    status, _, body = await read_response(reader)
    assert status == 200, (status, body)
    return json.loads(body)


async def until_closed(reader, within=5.0):
    """Waits for the server to close the connection; returns what it still sent."""
    got = b""
    try:
        while data := await asyncio.wait_for(reader.read(65536), within):
            got += data
    except ConnectionResetError:
        pass
    return got


def get(path, extra=b""):
    return b"GET %s HTTP/1.1\r\nHost: t\r\n%s\r\n" % (path.encode(), extra)


def post(path, body, extra=b""):
    return b"POST %s HTTP/1.1\r\nHost: t\r\ncontent-length: %d\r\n%s\r\n%s" % (path.encode(), len(body), extra, body)


class Recording(ConnectionGuard):
    """A guard keeping the connections it made."""

    def __init__(self, *args):
        super().__init__(*args)
        self.made = []

    def __call__(self, **uvicorn_args):
        self.made.append(super().__call__(**uvicorn_args))
        return self.made[-1]


def test_uvicorn_builds_the_guarded_protocol_around_its_own():
    # uvicorn calls the guard with its protocol arguments, which build H11Protocol: a change of
    # that contract in uvicorn fails here (and every test below), not silently in production.
    guard = Recording(50, 5.0)

    async def test(port):
        for _ in range(3):
            reader, writer = await connect(port)
            writer.write(get("/x"))
            assert (await read_json(reader))["path"] == "/x"
            writer.close()
            await until_closed(reader)

    serve(test, guard)
    assert len(guard.made) == 3
    assert all(isinstance(c, GuardedConnection) and type(c.inner) is H11Protocol for c in guard.made)
    assert guard.open == 0


def test_pipelined_requests_and_bodies_are_served_normally():
    guard = Recording(50, 0.5)

    async def test(port):
        reader, writer = await connect(port)
        # Two requests in one write, the first slower than header_timeout: both answered, in order.
        writer.write(get("/slow") + get("/second"))
        assert (await read_json(reader))["path"] == "/slow"
        assert (await read_json(reader))["path"] == "/second"
        # A body holding CRLF CRLF, pipelined with a GET, then a body sent in pieces, slowly.
        writer.write(post("/a", b"x\r\n\r\ny" * 100) + get("/b"))
        assert (await read_json(reader))["body"] == "x\r\n\r\ny" * 100
        assert (await read_json(reader))["path"] == "/b"
        writer.write(post("/c", b"0123456789")[:-6])
        await asyncio.sleep(0.7)
        writer.write(b"456789")
        assert (await read_json(reader))["body"] == "0123456789"
        # Chunked, and 100-continue (the body sent after the interim answer, slowly).
        writer.write(b"POST /d HTTP/1.1\r\nHost: t\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
        assert (await read_json(reader))["body"] == "abc"
        writer.write(b"POST /e HTTP/1.1\r\nHost: t\r\ncontent-length: 4\r\nexpect: 100-continue\r\n\r\n")
        assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).startswith(b"HTTP/1.1 100 ")
        writer.write(b"ab")
        await asyncio.sleep(0.7)
        writer.write(b"cd")
        assert (await read_json(reader))["body"] == "abcd"
        # A head whose end straddles the start of the previous answer.
        writer.write(get("/slow") + get("/f")[:-2])
        await asyncio.sleep(0.85)
        writer.write(b"\r\n")
        assert [(await read_json(reader))["path"] for _ in range(2)] == ["/slow", "/f"]
        await asyncio.sleep(0.7)
        writer.write(get("/g"))      # the connection was not timed out meanwhile
        assert (await read_json(reader))["path"] == "/g"
        # Still guarded: a head left incomplete now is answered 408.
        writer.write(b"GET /h HT")
        assert (await until_closed(reader)).startswith(b"HTTP/1.1 408 ")
        writer.close()

    serve(test, guard)
    assert guard.open == 0


def test_a_head_must_be_complete_within_header_timeout():
    guard = ConnectionGuard(50, 0.5)

    async def test(port):
        t0 = time.monotonic()
        idle = await connect(port)
        slow = await connect(port)
        for byte in get("/x")[:16]:        # a byte every 25 ms until just before the deadline
            slow[1].write(bytes([byte]))
            await asyncio.sleep(0.025)
        for reader, writer in (idle, slow):
            assert (await until_closed(reader)).startswith(b"HTTP/1.1 408 Request Timeout\r\n")
            writer.close()
        assert 0.5 <= time.monotonic() - t0 < 2.0
        # Keep-alive: a pause longer than header_timeout, then a second request with its own deadline.
        reader, writer = await connect(port)
        writer.write(get("/1"))
        assert (await read_json(reader))["path"] == "/1"
        await asyncio.sleep(0.8)
        writer.write(get("/2")[:10])
        await asyncio.sleep(0.3)
        writer.write(get("/2")[10:])
        assert (await read_json(reader))["path"] == "/2"
        writer.write(get("/3")[:10])
        t1 = time.monotonic()
        assert (await until_closed(reader)).startswith(b"HTTP/1.1 408 ")
        assert 0.5 <= time.monotonic() - t1 < 1.5
        writer.close()

    serve(test, guard)
    assert guard.open == 0


def test_connections_past_the_cap_get_503_and_are_closed():
    guard = ConnectionGuard(3, 5.0)

    async def test(port):
        held = [await connect(port) for _ in range(3)]
        await asyncio.sleep(0.1)
        assert guard.open == 3
        extra = await connect(port)
        assert (await until_closed(extra[0], 2)).startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
        extra[1].close()
        # The held ones are served; once one is gone a new connection is accepted.
        held[0][1].write(get("/h"))
        assert (await read_json(held[0][0]))["path"] == "/h"
        held[0][1].close()
        await until_closed(held[0][0])
        for _ in range(50):
            if guard.open < 3:
                break
            await asyncio.sleep(0.02)
        reader, writer = await connect(port)
        writer.write(get("/new"))
        assert (await read_json(reader))["path"] == "/new"
        for _, w in held[1:] + [(reader, writer)]:
            w.close()

    serve(test, guard)
    assert guard.open == 0


def test_a_websocket_upgrade_leaves_the_guard():
    pytest.importorskip("wsproto")
    guard = Recording(50, 0.5)

    async def test(port):
        reader, writer = await connect(port)
        writer.write(get("/ws", b"Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
                                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"))
        assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).startswith(b"HTTP/1.1 101 ")
        with pytest.raises(asyncio.TimeoutError):       # no 408 once upgraded
            await asyncio.wait_for(reader.read(1), 1.0)
        assert guard.open == 1 and type(guard.made[0].inner) is not H11Protocol
        writer.close()
        await until_closed(reader)

    serve(test, guard)
    assert guard.open == 0
