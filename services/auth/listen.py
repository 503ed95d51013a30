"""Where the auth HTTP endpoints listen: ``host:port`` parsing and the port reservation (SO_REUSEPORT)."""
from __future__ import annotations

import socket

from aigc_gateway.config import ConfigError


def split_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)


def reserve_port(host: str, port: int) -> socket.socket:
    """A bound, not listening, SO_REUSEPORT socket: holds the port (port 0 picks one) for the workers'
    listening sockets, also across a worker's restart; the kernel gives connections only to listeners."""
    if not hasattr(socket, "SO_REUSEPORT"):
        raise ConfigError(["auth.http_listen: serving the auth HTTP endpoints needs SO_REUSEPORT (Linux)"])
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
