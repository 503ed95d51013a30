"""One HTTP/1.1 connection served to an ASGI app on the event loop's own thread: the protocol under
:class:`aigc_gateway.httpserver.HTTPServer`.

httptools (llhttp, Node's parser) parses; this module owns what a server adds to a parser, and only that:
requests answered one at a time in arrival order (pipelining), a whole request body buffered (bounded)
before the app runs, the response framed (content-length, chunked, HEAD, ``connection: close``), limits
and timeouts. Each request is one task on the loop, as any coroutine expects (httpx and anyio need a
current task: running the app's first step inside ``data_received``, an eager start written for Python
3.11, broke the sign-in endpoints' OIDC client). The one exception is an :data:`Immediate` answer: a
server may be given a plain function that answers the requests it can without waiting (``/auth`` from its
caches), called in the read callback with no task and no ASGI messages; what it declines goes to the app.

What the parser refuses never reaches the app: a malformed request line or header (whitespace before a
colon, obs-fold, a control byte, a byte above 0x7F in the target), conflicting Content-Length and
Transfer-Encoding: 400 and ``connection: close``. Duplicate headers, absolute-form targets, HTTP/1.0
without ``Host`` and header values with bytes above 0x7F reach the app as sent, for the app to judge.
"""
from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from http import HTTPStatus
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_to_bytes

import httptools

if TYPE_CHECKING:
    from .httpserver import HTTPServer, Limits

log = logging.getLogger(__name__)

App = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


class Headers(bytes):
    """Response header lines (``name: value`` and CRLF each), checked once by :meth:`of` so that an immediate
    answer, sent again on every hit, is not checked again."""

    @classmethod
    def of(cls, headers: Iterable[tuple[bytes, bytes]]) -> Headers:
        """Lower-case names; a line break in a name or value, or a header the server owns (framing,
        ``connection``), is refused with ValueError."""
        lines = []
        for name, value in headers:
            name = name.lower()
            line = b"%s: %s" % (name, value)
            if name in _SERVER_OWNED or b"\r" in line or b"\n" in line or b":" in name or not name:
                raise ValueError(f"header {name!r} cannot be part of an immediate answer")
            lines.append(line + b"\r\n")
        return cls(b"".join(lines))


# What a plain function answers at once: (status, header lines, body); None: the app answers.
Answer = tuple[int, Headers, bytes]
Immediate = Callable[[dict[str, Any]], Answer | None]
_SERVER_OWNED = frozenset({b"connection", b"content-length", b"transfer-encoding", b"keep-alive"})

_REASONS = {status.value: status.phrase.encode() for status in HTTPStatus}
_STATUS_LINES: dict[tuple[str, int], bytes] = {}
_ASGI = {"version": "3.0", "spec_version": "2.3"}
_CLOSE = b"connection: close\r\n"
# Requests parsed ahead of the one the app is answering (pipelining) before reading pauses.
_MAX_QUEUED = 16


def status_line(version: str, status: int) -> bytes:
    key = (version, status)
    line = _STATUS_LINES.get(key)
    if line is None:
        line = b"HTTP/%s %d %s\r\n" % (version.encode(), status, _REASONS.get(status, b"Unknown"))
        if len(_STATUS_LINES) < 256:
            _STATUS_LINES[key] = line
    return line


def _error(status: int) -> bytes:
    body = b"%d %s\n" % (status, _REASONS[status])
    return (status_line("1.1", status) + b"content-type: text/plain; charset=utf-8\r\n"
            b"content-length: %d\r\n" % len(body) + _CLOSE + b"\r\n" + body)


class _Refused(Exception):
    """Raised from a parser callback to stop parsing: the request is answered ``status`` and the
    connection closed."""

    def __init__(self, status: int):
        super().__init__(status)
        self.status = status


class _Request:
    """One parsed request, its ASGI ``receive`` and ``send``, and its response as far as the app has sent it."""

    __slots__ = ("conn", "scope", "body", "keep_alive", "head_only", "head", "chunked", "started", "done",
                 "disconnected")

    def __init__(self, conn: Connection, scope: dict[str, Any], body: bytes | None, keep_alive: bool):
        self.conn = conn
        self.scope = scope
        self.body = body  # None once the app has received it
        self.keep_alive = keep_alive
        self.head_only = scope["method"] == "HEAD"
        self.head = b""  # the status line and headers, once http.response.start came
        self.chunked = False
        self.started = False  # the head is written
        self.done = False  # the last body message is written
        self.disconnected: asyncio.Future[None] | None = None

    async def receive(self) -> dict[str, Any]:
        if self.body is not None:
            body, self.body = self.body, None
            return {"type": "http.request", "body": body, "more_body": False}
        if self.disconnected is None:
            self.disconnected = self.conn.loop.create_future()
            if self.conn.closed:
                self.disconnected.set_result(None)
        await self.disconnected
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            if self.head:
                raise RuntimeError("http.response.start sent twice")
            self.head = self._head(message)
            return
        if kind != "http.response.body":
            raise RuntimeError(f"unexpected ASGI message {kind!r}")
        if not self.head:
            raise RuntimeError("http.response.body before http.response.start")
        if self.done:
            raise RuntimeError("http.response.body after the last one")
        conn = self.conn
        body: bytes = message.get("body", b"")
        more: bool = message.get("more_body", False)
        data = b""
        if not self.started:
            self.started = True
            head = self.head
            if b"\r\ncontent-length:" not in head:
                if not more:
                    head += b"content-length: %d\r\n" % len(body)
                elif self.keep_alive:
                    self.chunked = True
                    head += b"transfer-encoding: chunked\r\n"
                # else (HTTP/1.0, or closing anyway): the body ends where the connection does
            if not self.keep_alive or conn.server.stopping:
                self.keep_alive = False
                head += _CLOSE
            data = head + b"\r\n"
        if not self.head_only:
            if not self.chunked:
                data += body
            else:
                if body:
                    data += b"%x\r\n%s\r\n" % (len(body), body)
                if not more:
                    data += b"0\r\n\r\n"
        if data:
            conn.write(data)
        if not more:
            self.done = True
            if not self.keep_alive:
                conn.close()

    def respond(self, answer: Answer) -> None:
        """The whole response at once (an :data:`Immediate` answer), framed as :meth:`send` frames one body."""
        status, headers, body = answer
        conn = self.conn
        head = status_line(self.scope["http_version"], status) + headers + b"content-length: %d\r\n" % len(body)
        if not self.keep_alive or conn.server.stopping:
            self.keep_alive = False
            head += _CLOSE
        self.started = self.done = True
        conn.write(head + b"\r\n" if self.head_only else head + b"\r\n" + body)
        if not self.keep_alive:
            conn.close()

    def _head(self, message: dict[str, Any]) -> bytes:
        parts = [status_line(self.scope["http_version"], message["status"])]
        for name, value in message.get("headers", ()):
            name = name.lower()
            if name == b"connection":
                if value.lower() == b"close":
                    self.keep_alive = False
                continue  # the server decides (and says) whether the connection stays
            parts += (name, b": ", value, b"\r\n")
        head = b"".join(parts)
        # One CR and one LF a line: a name or value carrying a line break would add a header of its own.
        lines = len(parts) // 4 + 1
        if head.count(b"\n") != lines or head.count(b"\r") != lines:
            raise ValueError("a response header carries a line break")
        # Every line ends with CRLF and the status line comes first: "\r\ncontent-length:" finds the header.
        return head


class Connection(asyncio.Protocol):
    """A client's connection. ``server`` is the serving state shared by its connections (app, limits,
    the set of connections, whether it is stopping)."""

    def __init__(self, server: HTTPServer):
        self.server = server
        self.app: App = server.app
        self.immediate: Immediate | None = server.immediate
        self.limits: Limits = server.limits
        self.loop = server.loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.addresses: dict[str, Any] = {}
        # The message being parsed.
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.body_size = 0
        self.begun = False  # a message has begun and is not complete
        self.in_head = False  # ... and its head is not complete
        self.head_size = 0
        self.head_started = 0.0
        self.last_read = 0.0
        # Requests parsed and not answered yet (the first is the app's, if ``current`` is set).
        self.queue: deque[_Request] = deque()
        self.current: _Request | None = None
        self.task: asyncio.Task[None] | None = None  # current's; referenced here (the loop's reference is weak)
        self.refusal = 0  # the status to answer once the requests ahead are answered, then close
        self.write_paused = False
        self.read_paused = False
        self.closed = False

    # -- asyncio.Protocol ------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not its subclasses
        self.last_read = self.loop.time()
        peer = transport.get_extra_info("peername")
        local = transport.get_extra_info("sockname")
        self.addresses = {"client": tuple(peer[:2]) if isinstance(peer, tuple) else None,
                          "server": tuple(local[:2]) if isinstance(local, tuple) else None}
        self.server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.connections.discard(self)
        for request in (self.current, *self.queue):
            if request is not None and request.disconnected is not None and not request.disconnected.done():
                request.disconnected.set_result(None)
        self.queue.clear()
        # An app still answering is left to finish (a webhook's transaction, a sign-in): its writes go nowhere.
        self.server.connection_closed()

    def data_received(self, data: bytes) -> None:
        if self.refusal or self.closed:
            return  # answering a refusal: nothing after it is read
        self.last_read = self.loop.time()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # An Upgrade: what was parsed is answered, then the connection closes (no protocol but HTTP/1.1 is
            # served). A CONNECT was refused before this (its authority-form target is no path: 400).
            self._refuse(400 if self.begun else 0)
            return
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            self._refuse(cause.status if isinstance(cause, _Refused) else 400)
            if not isinstance(cause, _Refused):
                log.error("HTTP parser callback failed", exc_info=cause)
            return
        except httptools.HttpParserError:
            self._refuse(400)
            return
        if self.in_head:  # a head still incomplete: counted by the chunk (at most one chunk over)
            self.head_size += len(data)
            if self.head_size > self.limits.max_head:
                self._refuse(431)
                return
        if len(self.queue) > _MAX_QUEUED and not self.read_paused:
            self.read_paused = True
            self.transport.pause_reading()  # type: ignore[union-attr]

    def eof_received(self) -> bool | None:
        # A client that half-closes still gets the answers to what it sent, then the connection closes.
        if self.current is not None or self.queue:
            self.refusal = -1
            return True
        return False

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self._next()

    # -- httptools callbacks ---------------------------------------------

    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = []
        self.body = []
        self.body_size = 0
        self.begun = self.in_head = True
        self.head_size = 0
        self.head_started = self.last_read

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value.rstrip(b" \t")))

    def on_headers_complete(self) -> None:
        self.in_head = False
        expect = False
        for name, value in self.headers:
            if name == b"content-length":
                if not value.isdigit() or int(value) > self.limits.max_body:
                    raise _Refused(413 if value.isdigit() else 400)
            elif name == b"expect":
                expect = value.lower() == b"100-continue"
        if expect and self.current is None and not self.queue:  # the body is wanted (not when pipelined:
            # a 100 would come before the answers to the requests ahead; the client sends the body after a wait)
            self.write(status_line(self.parser.get_http_version(), 100) + b"\r\n")

    def on_body(self, body: bytes) -> None:
        self.body_size += len(body)
        if self.body_size > self.limits.max_body:
            raise _Refused(413)
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.begun = False
        self.head_size = 0
        parser = self.parser
        version = parser.get_http_version()
        url = self.url
        if b"#" in url:
            url = url.partition(b"#")[0]
        if url[:1] == b"/":
            raw_path, _, query = url.partition(b"?")
        elif url == b"*":
            raw_path, query = url, b""
        else:  # absolute-form: the path and query of the URL; the Host header stays as sent
            try:
                parsed = httptools.parse_url(url)
            except httptools.HttpParserInvalidURLError:
                raise _Refused(400) from None
            raw_path, query = parsed.path or b"/", parsed.query or b""
        path = raw_path.decode("ascii") if b"%" not in raw_path else \
            unquote_to_bytes(raw_path).decode("utf-8", "replace")
        scope = {"type": "http", "asgi": _ASGI, "http_version": version, "method": parser.get_method().decode(),
                 "scheme": "http", "path": path, "raw_path": raw_path, "query_string": query, "root_path": "",
                 "headers": self.headers, **self.addresses}
        body = b"".join(self.body)
        keep_alive = version == "1.1" and parser.should_keep_alive()
        self.queue.append(_Request(self, scope, body, keep_alive))
        self.headers = []
        self.body = []
        self._next()

    # -- answering ---------------------------------------------------------

    def _next(self) -> None:
        """Give the app the next parsed request, unless one is under way or writes are held back; with none
        left, answer a refusal and close, close a stopping server's connection, or read again."""
        if self.current is not None or self.write_paused or self.closed:
            return
        while self.queue and self.immediate is not None:
            answer = self._immediately(self.queue[0])
            if answer is None:
                break
            self.queue.popleft().respond(answer)
            if self.write_paused or self.closed:
                return
        if self.queue:
            request = self.current = self.queue.popleft()
            self.task = self.loop.create_task(self._run(request))
            self.task.add_done_callback(self._answered)
        elif self.refusal:
            if self.refusal > 0:
                self.write(_error(self.refusal))
            self.close()
        elif self.server.stopping and not self.begun:
            self.close()
        elif self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()  # type: ignore[union-attr]

    def _immediately(self, request: _Request) -> Answer | None:
        try:
            return self.immediate(request.scope)  # type: ignore[misc]  # not None: checked by the caller
        except Exception:  # the app answers instead, as it would have without the immediate function
            log.exception("%s %s: the immediate answer failed", request.scope["method"], request.scope["path"])
            return None

    def _answered(self, task: asyncio.Task[None]) -> None:
        self.task = None
        self.current = None
        self._next()

    async def _run(self, request: _Request) -> None:
        try:
            await self.app(request.scope, request.receive, request.send)
        except Exception:
            log.exception("%s %s failed", request.scope["method"], request.scope["path"])
            if not request.started:
                self.write(_error(500))
            self.close()
            return
        if not request.done:
            if not request.started:
                log.error("%s %s: the app returned without a response", request.scope["method"],
                          request.scope["path"])
                self.write(_error(500))
            self.close()  # a response cut short: only closing tells the client

    def write(self, data: bytes) -> None:
        if not self.closed:
            self.transport.write(data)  # type: ignore[union-attr]

    def close(self) -> None:
        """Close once what was written is sent; nothing more is read or answered."""
        if not self.closed:
            self.closed = True
            self.queue.clear()
            self.transport.close()  # type: ignore[union-attr]

    def _refuse(self, status: int) -> None:
        """Stop reading; answer what was parsed before, then ``status`` (0: nothing) and close."""
        self.refusal = status or -1
        self.begun = self.in_head = False
        if not self.read_paused:
            self.read_paused = True
            self.transport.pause_reading()  # type: ignore[union-attr]
        self._next()

    # -- housekeeping (the server's sweep, once a second) ------------------

    def sweep(self, now: float) -> None:
        """Close what waited too long: a head not complete within ``head_timeout`` (408), a body not
        read further within ``read_timeout`` (408), an idle keep-alive connection after ``idle_timeout``."""
        if self.closed or self.current is not None or self.queue:
            return
        limits = self.limits
        if self.begun:
            if (self.in_head and now - self.head_started > limits.head_timeout) or \
                    (not self.in_head and now - self.last_read > limits.read_timeout):
                self._refuse(408)
        elif now - self.last_read > limits.idle_timeout or self.server.stopping:
            self.close()
