"""The development stack's ports and its per-machine secrets (see :mod:`.stack`)."""
from __future__ import annotations

import base64
import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Ports:
    template: int = 50061
    instance: int = 50062
    auth: int = 50063
    usersync: int = 50064
    metrics: int = 9464
    auth_http: int = 8081
    usersync_http: int = 8082
    bridge: int = 8080
    idp: int = 9090
    dashboard: int = 8000  # nginx: the dashboard host (the page, /v1/… and sign-in on one origin)

    @classmethod
    def from_env(cls, environ: dict[str, str]) -> Ports:
        """AIGC_DEV_<NAME>_PORT overrides one port; AIGC_DEV_PORT_OFFSET shifts them all."""
        offset = int(environ.get("AIGC_DEV_PORT_OFFSET", "0"))
        ports = cls()
        for name in ports.__dataclass_fields__:
            value = environ.get(f"AIGC_DEV_{name.upper()}_PORT")
            setattr(ports, name, int(value) if value else getattr(ports, name) + offset)
        return ports

    def busy(self) -> list[str]:
        taken = []
        for name, port in vars(self).items():
            with socket.socket() as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    taken.append(f"{port} ({name}: set AIGC_DEV_{name.upper()}_PORT or AIGC_DEV_PORT_OFFSET)")
        return taken


def write_private(path: Path, text: str) -> None:
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_text(text)


def load_keys(path: Path) -> dict[str, str]:
    """This machine's development secrets, made once (so sessions survive a restart)."""
    keys = json.loads(path.read_text()) if path.exists() else {}
    for name in ("service_token", "session_key", "client_secret"):
        keys.setdefault(name, base64.urlsafe_b64encode(os.urandom(36)).decode())
    write_private(path, json.dumps(keys))
    return keys
