"""The whole backend on the test bed for REST and CLI tests: the four services in this process
against real PostgreSQL, the test bed and the Logto double, the bridge binary in front."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from aigc_gateway.config import Settings
from tests.plugins.gateway import RunningGateway, make_settings
from tests.plugins.logto import usersync_config
from tests.plugins.oidc import Issuer

SESSION_KEY = "delivery-session-key-" + "s" * 32
SAMPLE = "stable-diffusion-cpu"


def stack_settings(database_url: str, issuer: Issuer, kubeconfig: Path, namespace: str, logto: Any) -> Settings:
    return make_settings(
        database_url, issuer, namespaces=[namespace], kubernetes={"kubeconfig": str(kubeconfig)},
        auth={"session_keys": [SESSION_KEY], "http_listen": "127.0.0.1:0", "cookie_secure": False, "http_workers": 0},
        usersync=usersync_config(logto), instance={"reconcile_interval_seconds": 1})


@dataclass
class Rest:
    """REST calls through the bridge, as users of the test issuer."""

    url: str
    issuer: Issuer
    gateway: RunningGateway
    namespace: str
    logto: Any = None

    def headers(self, user: str | None, **extra: str) -> dict[str, str]:
        h = dict(extra)
        if user:
            h["Authorization"] = "Bearer " + self.issuer.mint(user, roles=["admin"] if user == "admin" else [])
        return h

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, timeout=60)

    def template(self, name: str = SAMPLE) -> str:
        return f"/v1/namespaces/{self.namespace}/templates/{name}"


async def session_cookie(gw: RunningGateway, user: str) -> str:
    """A real signed-in session of `user`, made by the auth service's own store: the Cookie header value."""
    from aigc_gateway.sessions import SessionCookie, SessionStore

    settings = gw.runtime.settings
    store = SessionStore(gw.runtime.db)
    session_id, record = await store.create(user=user, email=f"{user}@aigc.test", ttl_seconds=600)
    value = SessionCookie([k.get_secret_value() for k in settings.auth.session_keys]).issue(
        session_id, user, int(record.expires_at.timestamp()))
    return f"{settings.auth.cookie_name}={value}"
