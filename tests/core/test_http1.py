"""What aigc_gateway.http1 adds to the parser: answers in arrival order on a kept-alive connection
(pipelining, also when the app waits), response framing (content-length, chunked, HEAD, HTTP/1.0),
bodies and their limit, the head limit, Expect, a failing app, timeouts (driven by the server's sweep
with a chosen clock, not by waiting), upgrades and half-closed connections."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from aigc_gateway.http1 import Answer, Headers
from aigc_gateway.httpserver import HTTPServer, Limits

from .test_httpserver import exchange


class Echo:
    """Answers the path, the method and the body it received. ``/hold`` waits for ``release``; ``/stream``
    answers in two body messages; ``/fail`` raises before answering, ``/cut`` after the head; ``/bad-header``
    sends a header with a line break; ``/silent`` returns without answering."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.held = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope["path"]
        self.seen.append(path)
        message = await receive()
        body = message["body"]
        if path == "/hold":
            self.held.set()
            await self.release.wait()
        if path == "/fail":
            raise RuntimeError("the app failed")
        if path == "/silent":
            return
        headers = [(b"x-extra", b"a\r\nset-cookie: x")] if path == "/bad-header" else []
        answer = f"{scope['method']} {path} {len(body)}".encode()
        if path in ("/stream", "/cut"):
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": answer, "more_body": True})
            if path == "/cut":
                raise RuntimeError("cut short")
            await send({"type": "http.response.body", "body": b"!"})
            return
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": answer})


@pytest.fixture
async def echo() -> AsyncIterator[tuple[Echo, HTTPServer]]:
    app = Echo()
    server = HTTPServer(app, "127.0.0.1:0", name="test-http1",
                        limits=Limits(max_head=4096, max_body=1000, head_timeout=30, read_timeout=30,
                                      idle_timeout=300))
    await server.start()
    yield app, server
    await server.stop()


async def responses(reader: asyncio.StreamReader, count: int) -> list[tuple[bytes, bytes]]:
    """``count`` responses with a content-length: (status line and headers, body) each."""
    out = []
    for _ in range(count):
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        out.append((head, await reader.readexactly(length)))
    return out


async def test_pipelined_requests_are_answered_in_order_even_when_the_first_waits(echo) -> None:
    app, server = echo
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /hold HTTP/1.1\r\nHost: a\r\n\r\nGET /second HTTP/1.1\r\nHost: a\r\n\r\n"
                 b"POST /third HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc")
    await app.held.wait()
    assert app.seen == ["/hold"]  # the others wait for the first's answer
    app.release.set()
    answers = await responses(reader, 3)
    assert [body for _, body in answers] == [b"GET /hold 0", b"GET /second 0", b"POST /third 3"]
    assert all(b"connection: close" not in head for head, _ in answers)  # kept alive
    writer.close()


async def test_a_chunked_request_body_arrives_whole(echo) -> None:
    app, server = echo
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"POST /body HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
    writer.write(b"2\r\nde\r\n0\r\n\r\n")
    [(_, body)] = await responses(reader, 1)
    assert body == b"POST /body 5"
    writer.close()


async def test_framing_head_streaming_and_http10(echo) -> None:
    app, server = echo
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"HEAD /h HTTP/1.1\r\nHost: a\r\n\r\nGET /stream HTTP/1.1\r\nHost: a\r\n\r\n")
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"content-length: 9\r\n" in head  # HEAD: no body
    stream = await reader.readuntil(b"0\r\n\r\n")
    assert b"transfer-encoding: chunked\r\n" in stream and stream.endswith(b"\r\n\r\nd\r\nGET /stream 0\r\n1\r\n!\r\n0\r\n\r\n")
    writer.close()
    answer = await exchange(server.port, b"GET /stream HTTP/1.0\r\n\r\n")  # the body ends with the connection
    assert answer.startswith(b"HTTP/1.0 200 OK\r\n") and b"connection: close\r\n" in answer
    assert answer.endswith(b"\r\n\r\nGET /stream 0!")


async def test_a_body_over_the_limit_is_413_and_never_reaches_the_app(echo) -> None:
    app, server = echo
    for request in (b"POST /big HTTP/1.1\r\nHost: a\r\nContent-Length: 1001\r\n\r\n",
                    b"POST /big HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3e9\r\n" + b"x" * 1001):
        answer = await exchange(server.port, request)
        assert answer.startswith(b"HTTP/1.1 413 ") and b"connection: close\r\n" in answer
    assert app.seen == []


async def test_a_head_over_the_limit_is_431_even_when_it_arrives_a_little_at_a_time(echo) -> None:
    app, server = echo
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET / HTTP/1.1\r\nHost: a\r\n")
    for _ in range(50):
        writer.write(b"X-Filler: " + b"y" * 100 + b"\r\n")
        await writer.drain()
    answer = await reader.read()
    assert answer.startswith(b"HTTP/1.1 431 ") and app.seen == []


async def test_expect_100_continue_is_answered_before_the_body_is_sent(echo) -> None:
    app, server = echo
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"POST /e HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n")
    assert await reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(b"ok")
    [(_, body)] = await responses(reader, 1)
    assert body == b"POST /e 2"
    writer.close()


@pytest.mark.parametrize("path", ["/fail", "/bad-header", "/silent"])
async def test_an_app_that_fails_before_answering_gives_500_and_a_closed_connection(echo, path: str) -> None:
    app, server = echo
    answer = await exchange(server.port, b"GET %s HTTP/1.1\r\nHost: a\r\n\r\nGET /never HTTP/1.1\r\nHost: a\r\n\r\n"
                            % path.encode())
    assert answer.startswith(b"HTTP/1.1 500 ") and answer.count(b"HTTP/1.1") == 1
    assert b"set-cookie" not in answer and app.seen == [path]


async def test_a_response_cut_short_closes_the_connection(echo) -> None:
    app, server = echo
    answer = await exchange(server.port, b"GET /cut HTTP/1.1\r\nHost: a\r\n\r\n")
    # the chunked body never ends: only the close tells the client
    assert answer.startswith(b"HTTP/1.1 200 OK") and not answer.endswith(b"0\r\n\r\n")


async def test_an_upgrade_is_answered_as_plain_http_then_the_connection_closes(echo) -> None:
    app, server = echo
    answer = await exchange(server.port, b"GET /u HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\n"
                                         b"Upgrade: websocket\r\n\r\nnot http")
    assert answer.startswith(b"HTTP/1.1 200 OK") and answer.endswith(b"GET /u 0")
    answer = await exchange(server.port, b"CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 ")  # no tunnels here
    assert app.seen == ["/u"]


async def test_a_half_closed_client_still_gets_its_answers(echo) -> None:
    app, server = echo
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /hold HTTP/1.1\r\nHost: a\r\n\r\nGET /next HTTP/1.1\r\nHost: a\r\n\r\n")
    writer.write_eof()
    await app.held.wait()
    app.release.set()
    answer = await reader.read()  # both answers, then the server closes
    assert answer.count(b"HTTP/1.1 200 OK") == 2 and answer.endswith(b"GET /next 0")


async def test_the_sweep_closes_slow_heads_slow_bodies_and_idle_connections(echo) -> None:
    app, server = echo
    slow_head = await asyncio.open_connection("127.0.0.1", server.port)
    slow_head[1].write(b"GET / HTTP/1.1\r\nHost: a\r\n")
    slow_body = await asyncio.open_connection("127.0.0.1", server.port)
    slow_body[1].write(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc")
    idle = await asyncio.open_connection("127.0.0.1", server.port)
    idle[1].write(b"GET /first HTTP/1.1\r\nHost: a\r\n\r\n")
    await responses(idle[0], 1)
    await slow_body[1].drain()
    while sum(c.begun for c in server.connections) < 2:  # both slow ones are read as far as they were sent
        await asyncio.sleep(0)
    now = max(c.last_read for c in server.connections)
    server.sweep(now + 29)  # within every limit: nothing closes
    assert len(server.connections) == 3
    server.sweep(now + 31)  # past the head and read timeouts, within the idle one
    assert (await slow_head[0].read()).startswith(b"HTTP/1.1 408 ")
    assert (await slow_body[0].read()).startswith(b"HTTP/1.1 408 ")
    assert not idle[0].at_eof()
    server.sweep(now + 301)
    assert await idle[0].read() == b""  # closed without a word: it was between requests
    assert app.seen == ["/first"]


class Immediately:
    """Answers ``/now...`` paths at once (the path, the method, the body's length); ``/now-fail`` raises.
    Anything else is declined: the app answers it."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def __call__(self, scope: dict[str, Any]) -> Answer | None:
        path = scope["path"]
        self.asked.append(path)
        if path == "/now-fail":
            raise RuntimeError("the immediate answer failed")
        if not path.startswith("/now"):
            return None
        return 200, Headers.of([(b"X-Now", b"yes")]), f"now {scope['method']} {path}".encode()


@pytest.fixture
async def immediate() -> AsyncIterator[tuple[Echo, Immediately, HTTPServer]]:
    app, now = Echo(), Immediately()
    server = HTTPServer(app, "127.0.0.1:0", name="test-http1-now", immediate=now)
    await server.start()
    yield app, now, server
    await server.stop()


async def test_immediate_answers_keep_their_place_among_pipelined_requests(immediate) -> None:
    app, now, server = immediate
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /now1 HTTP/1.1\r\nHost: a\r\n\r\nGET /hold HTTP/1.1\r\nHost: a\r\n\r\n"
                 b"GET /now2 HTTP/1.1\r\nHost: a\r\n\r\nHEAD /now3 HTTP/1.1\r\nHost: a\r\n\r\n"
                 b"GET /last HTTP/1.1\r\nHost: a\r\n\r\n")
    [(head, body)] = await responses(reader, 1)  # /now1 at once
    assert body == b"now GET /now1" and head == b"HTTP/1.1 200 OK\r\nx-now: yes\r\ncontent-length: 13\r\n\r\n"
    await app.held.wait()
    assert now.asked == ["/now1", "/hold"]  # /now2 waits its turn behind /hold, which the app answers
    app.release.set()
    answers = await responses(reader, 2)
    assert [body for _, body in answers] == [b"GET /hold 0", b"now GET /now2"]
    head = await reader.readuntil(b"\r\n\r\n")  # HEAD: the length of the body it would have had, no body
    assert head == b"HTTP/1.1 200 OK\r\nx-now: yes\r\ncontent-length: 14\r\n\r\n"
    [(_, body)] = await responses(reader, 1)
    assert body == b"GET /last 0" and app.seen == ["/hold", "/last"]
    writer.close()


async def test_an_immediate_answer_that_fails_is_left_to_the_app_and_http10_closes(immediate) -> None:
    app, now, server = immediate
    answer = await exchange(server.port, b"GET /now-fail HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert answer.endswith(b"\r\n\r\nGET /now-fail 0") and app.seen == ["/now-fail"]
    answer = await exchange(server.port, b"GET /now HTTP/1.0\r\n\r\n")
    assert answer == b"HTTP/1.0 200 OK\r\nx-now: yes\r\ncontent-length: 12\r\nconnection: close\r\n\r\nnow GET /now"


@pytest.mark.parametrize("headers", [[(b"x-a", b"1\r\nset-cookie: x")], [(b"x-a\n", b"1")], [(b"connection", b"close")],
                                     [(b"Content-Length", b"3")], [(b"x:a", b"1")], [(b"", b"1")]])
def test_immediate_headers_refuse_line_breaks_and_what_the_server_owns(headers) -> None:
    with pytest.raises(ValueError):
        Headers.of(headers)
