"""A signing issuer for bearer-token tests: real keys, a real JWKS over HTTP.

The issuer serves `/.well-known/openid-configuration` and `/jwks` from a
thread (so it lives across event loops) and mints tokens with joserfc.
"""
from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import RSAKey

AUDIENCE = "https://api.aigc.test"


@dataclass
class Issuer:
    url: str
    key: RSAKey
    audience: str = AUDIENCE

    def mint(self, sub: str = "user-1", *, roles: list[str] | None = None, key: RSAKey | None = None,
             header: dict[str, Any] | None = None, **claims: Any) -> str:
        now = int(time.time())
        payload: dict[str, Any] = {"iss": self.url, "aud": self.audience, "sub": sub, "iat": now,
                                   "exp": now + 600, "roles": roles or [], "email": f"{sub}@aigc.test"}
        payload.update(claims)
        payload = {k: v for k, v in payload.items() if v is not None}  # `exp=None` leaves the claim out
        signing = key or self.key
        return jwt.encode(header or {"alg": "RS256", "kid": signing.kid}, payload, signing)


def _serve(jwks: dict[str, Any]) -> tuple[ThreadingHTTPServer, str]:
    holder: dict[str, str] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server API
            if self.path == "/.well-known/openid-configuration":
                body = {"issuer": holder["url"], "jwks_uri": holder["url"] + "/jwks"}
            elif self.path == "/jwks":
                body = jwks
            else:
                self.send_response(404)
                self.end_headers()
                return
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    holder["url"] = f"http://127.0.0.1:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, holder["url"]


@pytest.fixture(scope="session")
def issuer() -> Issuer:
    key = RSAKey.generate_key(2048, parameters={"kid": "test-key-1", "use": "sig", "alg": "RS256"})
    server, url = _serve({"keys": [key.as_dict(private=False)]})
    yield Issuer(url=url, key=key)
    server.shutdown()
