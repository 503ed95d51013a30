"""Serving HTTP endpoints (an ASGI app) inside this process's event loop: the one HTTP server stack of the
gateway (auth's ``/auth`` and sign-in endpoints, usersync's Logto webhooks).

httptools (llhttp) parses and :mod:`.http1` serves each connection on the event loop's own thread: a
request costs one wake-up of one thread, as in nginx or Go's netpoller, and one task (none when the server's
``immediate`` function answers it, as it answers most ``/auth`` checks).

Why not granian (the server until December 2026; issue 11, docs/auth.md has the figures): its socket I/O
runs on threads of its own, so each request crossed three threads and took the GIL twice, and every
hand-off waited for the scheduler: on the 2-core bench machine a ``/auth`` request waited 155-370 us for
a CPU under granian and 20-60 us here, and a do-nothing app had a p99 at 1,000/s of 0.72-1.05 ms under
granian and 0.57-0.66 ms here (nginx's ``return 204``: 0.53-0.62 ms). Why not uvicorn (also measured
for issue 11): its protocol is the same parser under several times the Python, with timers for every
request.

What the parser accepts, as the tests pin it: a malformed request line or header (whitespace before a
colon, obs-fold, a control byte, a raw byte above 0x7F in the request target), Content-Length with
Transfer-Encoding or twice: 400 that never reaches the app; duplicate headers, absolute-form request
lines, HTTP/1.0 without ``Host`` and header values with bytes above 0x7F (a raw UTF-8 cookie) reach the
app as sent, for the app to judge.

On Linux the listener binds with SO_REUSEPORT, which is what lets auth's worker processes listen on one
port. A port is always reserved first with :func:`reserve_port` (port 0 picks one), so that the number is
known before the listener binds it.
"""
from __future__ import annotations

import asyncio
import logging
import socket
from dataclasses import dataclass

from .config import ConfigError
from .http1 import App, Connection, Immediate

log = logging.getLogger(__name__)
STOP_TIMEOUT = 10.0


def split_listen(listen: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port``; no host: every interface)."""
    host, _, port = listen.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)


def reserve_port(host: str, port: int, setting: str = "auth.http_listen") -> socket.socket:
    """A bound, not listening, SO_REUSEPORT socket: holds the port (port 0 picks one) for the listening
    sockets (auth's workers', also across a worker's restart); the kernel gives connections only to listeners.
    ``setting``: the listen setting named when the platform cannot do it."""
    if not hasattr(socket, "SO_REUSEPORT"):
        raise ConfigError([f"{setting}: serving HTTP endpoints needs SO_REUSEPORT (Linux)"])
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                         flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


@dataclass(frozen=True)
class Limits:
    """What one request may take. nginx sends at most its large_client_header_buffers of URL (8k): the head
    limit leaves room to spare, so that an odd request is answered by the app (401/403), not by the server
    (431, a 500 to the user). The keep-alive timeout outlasts the proxies' own idle timeouts (nginx's upstream
    keepalive 60 s, Traefik's 90 s), so that it is the proxy that closes an idle connection, never this server
    under a request the proxy is sending."""

    max_head: int = 256 * 1024
    max_body: int = 1024 * 1024
    head_timeout: float = 30.0
    read_timeout: float = 30.0
    idle_timeout: float = 300.0


class HTTPServer:
    def __init__(self, app: App, listen: str, *, shared: bool = False, name: str = "http",
                 setting: str = "auth.http_listen", limits: Limits = Limits(), immediate: Immediate | None = None):
        """``shared``: other processes listen on this port too (the port was reserved by the pool); ``name``
        names the serving task; ``setting`` is the listen setting an error names; ``immediate`` answers, in the
        read callback and without a task, the requests it can answer without waiting (:mod:`.http1`)."""
        self.app = app
        self.immediate = immediate
        self.name = name
        self.setting = setting
        self.limits = limits
        self.host, self.port = split_listen(listen)
        self.shared = shared
        self.connections: set[Connection] = set()
        self.stopping = False
        self.loop: asyncio.AbstractEventLoop  # set by start()
        self._reservation: socket.socket | None = None
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._drained: asyncio.Event | None = None

    async def start(self) -> int:
        self.loop = asyncio.get_running_loop()
        if not self.shared:
            self._reservation = reserve_port(self.host, self.port, self.setting)
            self.port = self._reservation.getsockname()[1]
        try:
            listener = reserve_port(self.host, self.port, self.setting)
        except OSError as exc:
            await self.stop()
            raise OSError(f"cannot serve http://{self.host}:{self.port}: {exc}") from exc
        try:
            self._server = await self.loop.create_server(lambda: Connection(self), sock=listener, backlog=1024)
        except BaseException:
            listener.close()
            await self.stop()
            raise
        self._sweeper = asyncio.create_task(self._sweep(), name=f"{self.name}-sweep")
        return self.port

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self.sweep(self.loop.time())

    def sweep(self, now: float) -> None:
        """Close the connections that waited too long at ``now`` (:meth:`.http1.Connection.sweep`); one pass a
        second is all the timing a connection costs (no timer per request)."""
        for connection in list(self.connections):
            connection.sweep(now)

    def connection_closed(self) -> None:
        if self._drained is not None and not self.connections:
            self._drained.set()

    async def stop(self) -> None:
        """Stop listening, let the requests under way be answered (with ``connection: close``), close idle
        connections; what is still open after STOP_TIMEOUT is aborted."""
        server, self._server = self._server, None
        if server is not None:
            self.stopping = True
            server.close()
            self._drained = asyncio.Event()
            self.sweep(self.loop.time())
            if self.connections:
                try:
                    await asyncio.wait_for(self._drained.wait(), STOP_TIMEOUT)
                except TimeoutError:
                    for connection in list(self.connections):
                        if connection.transport is not None:
                            connection.transport.abort()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        if self._reservation is not None:
            self._reservation.close()
            self._reservation = None
