"""Toxiproxy for the chaos tests and bench/chaos.py: start the server the test bed built, and drive it.

The server binary is `testbed/testbed build`'s (`toxiproxy-server`, from the Go module
github.com/Shopify/toxiproxy/v2 at the version in testbed/aigc_testbed/config.py); `$AIGC_TESTBED_TOXIPROXY`
names another. Each user starts a server of its own on a free port (so concurrent tests never share a
proxy) and stops it by its own process handle.

The client is Toxiproxy's HTTP API with the standard library: proxies (`listen` on 127.0.0.1 with port 0,
Toxiproxy picks one), toxics (latency, bandwidth, reset_peer, timeout, ...) and `enabled: false` for a link
that is down (Toxiproxy closes the link's open connections and refuses new ones until it is enabled).
Calls are local and answer in milliseconds, so they are synchronous.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def server_binary() -> Path:
    """The toxiproxy-server `testbed build` made (building it if needed is the caller's `testbed build`)."""
    named = os.environ.get("AIGC_TESTBED_TOXIPROXY")
    if named:
        return Path(named)
    out = subprocess.run([sys.executable, str(REPO / "testbed" / "testbed"), "env"], capture_output=True,
                         text=True, check=True, stdin=subprocess.DEVNULL).stdout
    env = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    return Path(env["AIGC_TESTBED_TOXIPROXY"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ToxiproxyError(RuntimeError):
    pass


@dataclass
class Proxy:
    server: Toxiproxy
    name: str
    listen: str  # host:port that clients dial instead of the upstream
    upstream: str

    @property
    def port(self) -> int:
        return int(self.listen.rsplit(":", 1)[1])

    def toxic(self, kind: str, *, stream: str = "downstream", toxicity: float = 1.0, name: str = "",
              **attributes: Any) -> str:
        """Add a toxic; returns its name (for :meth:`remove`)."""
        name = name or f"{kind}_{stream}"
        self.server.request("POST", f"/proxies/{self.name}/toxics", {
            "name": name, "type": kind, "stream": stream, "toxicity": toxicity, "attributes": attributes})
        return name

    def remove(self, toxic: str) -> None:
        self.server.request("DELETE", f"/proxies/{self.name}/toxics/{toxic}")

    def clear(self) -> None:
        """Every toxic off and the link up."""
        for toxic in self.server.request("GET", f"/proxies/{self.name}/toxics"):
            self.remove(toxic["name"])
        self.enable(True)

    def enable(self, enabled: bool) -> None:
        """``False``: the link is down (open connections closed, new ones refused)."""
        self.server.request("POST", f"/proxies/{self.name}", {"enabled": enabled})


class Toxiproxy:
    """One toxiproxy-server process on 127.0.0.1 and its API."""

    def __init__(self, log: Path, binary: Path | None = None):
        self.binary = binary or server_binary()
        self.log = log
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.proxies: dict[str, Proxy] = {}

    def start(self, timeout: float = 20) -> Toxiproxy:
        if not self.binary.exists():
            raise ToxiproxyError(f"{self.binary} is missing: run testbed/testbed build")
        self.proc = subprocess.Popen([str(self.binary), "-host", "127.0.0.1", "-port", str(self.port)],
                                     stdin=subprocess.DEVNULL, stdout=self.log.open("ab"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.request("GET", "/version")
                return self
            except (OSError, ToxiproxyError):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise ToxiproxyError(f"toxiproxy-server did not start: {self.log.read_text()[-2000:]}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def request(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - our own local server
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            raise ToxiproxyError(f"{method} {path}: {exc.code} {exc.read().decode(errors='replace')}") from None
        text = raw.decode()
        if not text.strip():
            return None
        try:
            return json.loads(text)
        except ValueError:
            return text  # /version answers plain text in some releases

    def proxy(self, name: str, upstream: str) -> Proxy:
        """A proxy in front of ``upstream`` (host:port) on a port Toxiproxy picks."""
        made = self.request("POST", "/proxies", {"name": name, "listen": "127.0.0.1:0", "upstream": upstream,
                                                 "enabled": True})
        proxy = Proxy(self, name, made["listen"], upstream)
        self.proxies[name] = proxy
        return proxy

    def reset(self) -> None:
        """Every proxy enabled, every toxic removed."""
        self.request("POST", "/reset")

    def __enter__(self) -> Toxiproxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
