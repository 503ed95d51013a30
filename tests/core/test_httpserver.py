"""The gateway's HTTP server (aigc_gateway.httpserver, aigc_gateway.http1): what its parser refuses and what
it passes to the app as bytes, SO_REUSEPORT sharing of a reserved port, a taken port, and a graceful stop.
What a server adds to a parser is in test_http1.py."""
from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest

from aigc_gateway.httpserver import HTTPServer, reserve_port


class Recorder:
    """An ASGI app answering 200 with its name; keeps every request's scope. ``hold``: requests wait for it."""

    def __init__(self, name: str = "app") -> None:
        self.name = name
        self.scopes: list[dict[str, Any]] = []
        self.entered = asyncio.Event()
        self.hold: asyncio.Event | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.scopes.append(scope)
        self.entered.set()
        if self.hold is not None:
            await self.hold.wait()
        body = self.name.encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"%d" % len(body))]})
        await send({"type": "http.response.body", "body": body})


@pytest.fixture
async def served() -> AsyncIterator[tuple[Recorder, int]]:
    app = Recorder()
    server = HTTPServer(app, "127.0.0.1:0", name="test-http")
    port = await server.start()
    yield app, port
    await server.stop()


async def exchange(port: int, data: bytes) -> bytes:
    """Send ``data`` on a new connection, read until the server closes it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await reader.read()
    finally:
        writer.close()


@pytest.mark.parametrize("request_bytes", [
    b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n",  # a space in the target: no request line at all
    b"GET / HTTP/1.1 extra\r\nHost: a\r\n\r\n",
    b"GARBAGE\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",  # whitespace before the colon
    b"GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n folded\r\n\r\n",  # obs-fold
    b"GET / HTTP/1.1\r\nHost: a\r\nX-A: a\x01b\r\n\r\n",  # a control byte in a value
    b"GET /\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n",  # a raw byte above 0x7F in the target
    b"GET / HTTP/1.1\r\nHost: a\r\nX-A: a\rb\r\n\r\n",  # a bare CR
    b"GET / HTTP/1.1\nHost: a\n\n",  # bare LFs
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n",
    b"GET http://a b/ HTTP/1.1\r\nHost: a\r\n\r\n",
], ids=["space-in-target", "junk-after-version", "no-request-line", "space-before-colon", "obs-fold",
        "control-byte", "raw-utf8-target", "bare-cr", "bare-lf", "two-lengths", "length-and-chunked",
        "space-in-absolute"])
async def test_a_malformed_request_is_400_and_never_reaches_the_app(served, request_bytes: bytes) -> None:
    app, port = served
    answer = await exchange(port, request_bytes)
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert b"\r\nconnection: close\r\n" in answer
    assert app.scopes == []


async def test_what_the_app_decides_on_arrives_as_sent(served) -> None:
    """Duplicate Host headers, an absolute-form request line, HTTP/1.0 without Host and a raw UTF-8 cookie
    are the app's to judge (auth's /auth answers them 401/403): the server passes them, bytes unchanged."""
    app, port = served
    answers = [await exchange(port, b"GET /auth?rh=a HTTP/1.1\r\nHost: a\r\nHost: b\r\n"
                                    b"Cookie: theme=\xc3\xa9t\xc3\xa9; s=1\r\nConnection: close\r\n\r\n"),
               await exchange(port, b"GET http://bob.test/auth?rh=x HTTP/1.1\r\nHost: alice.test\r\n"
                                    b"Connection: close\r\n\r\n"),
               await exchange(port, b"GET /auth HTTP/1.0\r\n\r\n")]
    assert [a.partition(b"\r\n")[0] for a in answers] == [b"HTTP/1.1 200 OK", b"HTTP/1.1 200 OK", b"HTTP/1.0 200 OK"]
    duplicate, absolute, old = app.scopes
    assert duplicate["headers"][:3] == [(b"host", b"a"), (b"host", b"b"), (b"cookie", b"theme=\xc3\xa9t\xc3\xa9; s=1")]
    assert (absolute["path"], absolute["query_string"]) == ("/auth", b"rh=x")
    assert absolute["headers"][0] == (b"host", b"alice.test")
    assert old["headers"] == []  # no Host of the server's making


async def test_processes_share_a_reserved_port_with_so_reuseport() -> None:
    """Two servers on the port reserved for them (as auth's worker processes are): both answer on it, and
    once one stops the other answers every connection."""
    reservation = reserve_port("127.0.0.1", 0)
    port = reservation.getsockname()[1]
    first, second = Recorder("first"), Recorder("second")
    servers = [HTTPServer(app, f"127.0.0.1:{port}", shared=True) for app in (first, second)]
    try:
        for server in servers:
            assert await server.start() == port
        seen = set()
        for _ in range(64):  # the kernel spreads new connections by hash: both seen with p = 1 - 2**-63
            answer = await exchange(port, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            seen.add(answer.rpartition(b"\n")[2])
            if len(seen) == 2:
                break
        assert seen == {b"first", b"second"}
        await servers[0].stop()
        answers = {(await exchange(port, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"))
                   .rpartition(b"\n")[2] for _ in range(16)}
        assert answers == {b"second"}
    finally:
        for server in servers:
            await server.stop()
        reservation.close()


async def test_a_port_someone_else_listens_on_fails_the_start_and_frees_the_reservation() -> None:
    with socket.socket() as taken:  # without SO_REUSEPORT
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = HTTPServer(Recorder(), f"127.0.0.1:{port}", name="taken-test", setting="usersync.http_listen")
        with pytest.raises(OSError):
            await server.start()
    with socket.socket() as again:  # neither the reservation nor a listener is left behind
        again.bind(("127.0.0.1", port))


async def test_stopping_lets_a_request_under_way_finish_and_refuses_new_connections() -> None:
    app = Recorder()
    app.hold = asyncio.Event()
    server = HTTPServer(app, "127.0.0.1:0")
    port = await server.start()
    under_way = asyncio.create_task(exchange(port, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"))
    await app.entered.wait()
    stopping = asyncio.create_task(server.stop())
    # The listener closes first; the request under way holds the stop.
    while not server.stopping:
        await asyncio.sleep(0)
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", port)
    assert not stopping.done()
    app.hold.set()
    answer = await under_way
    assert answer.startswith(b"HTTP/1.1 200 ") and b"\r\nconnection: close\r\n" in answer
    await stopping
