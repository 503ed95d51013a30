"""Starting the auth service with its real neighbours for one test (shared by the auth tests)."""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aigc_gateway.db import Database
from aigc_gateway.db.models import InstanceRow, notify_instance_change
from aigc_gateway.services.auth.app import AuthService
from aigc_gateway.services.auth.ownermap import InstanceKey
from tests.plugins.auth_stack import CLIENT_ID, CLIENT_SECRET, SESSION_KEY, OIDCProvider, free_port
from tests.plugins.gateway import RunningGateway, make_settings

DOMAIN = "aigc.test"


@dataclass
class AuthStack:
    gateway: RunningGateway
    provider: OIDCProvider
    front_port: int  # where the browser-facing hosts are served (nginx, or the auth service itself)
    db: Database
    issuer: Any  # the bearer-token issuer of tests/plugins/oidc.py (admins for gRPC calls)

    @property
    def service(self) -> AuthService:
        return self.gateway.service("auth", AuthService)

    @property
    def auth_port(self) -> int:
        if self.service.workers is not None:
            return self.service.workers.port
        assert self.service.endpoints is not None
        return self.service.endpoints.port

    async def settled(self) -> None:
        """Every HTTP worker process has applied every owner map change made so far (no-op without workers)."""
        if self.service.workers is not None:
            await self.service.workers.barrier()

    def url(self, host: str, path: str = "/") -> str:
        return f"http://{host}:{self.front_port}{path}"

    async def set_instance(self, template: str, ident: int, slot: str, owner: str | None,
                           namespace: str = "ns") -> None:
        """Write the shared ``instances`` row as the instance service does (with its NOTIFY)."""
        now = datetime.now(UTC)
        async with self.db.session() as session:
            row = await session.get(InstanceRow, (namespace, template, ident))
            if row is None:
                row = InstanceRow(namespace=namespace, template=template, id=ident, slot=slot, owner=owner,
                                  orphaned=False, created_at=now, updated_at=now, state_changed_at=now)
                session.add(row)
            else:
                row.slot, row.owner, row.updated_at, row.state_changed_at = slot, owner, now, now
            await session.flush()
            await notify_instance_change(session, namespace, template, ident)

    async def wait_owner(self, template: str, ident: int, owner: str | None, namespace: str = "ns",
                         timeout: float = 30.0) -> float:
        """Seconds until the owner map shows ``owner`` (fails past ``timeout``: generous, so that a loaded
        machine does not fail it; the 1 s promise is a printed figure, see the tests that measure it)."""
        key = InstanceKey(namespace, template, ident)
        started = time.monotonic()
        while self.service.owners.owner(key) != owner:
            if time.monotonic() - started > timeout:
                raise AssertionError(f"owner map still says {self.service.owners.owner(key)!r} for {key}")
            await asyncio.sleep(0.01)
        await self.settled()
        return time.monotonic() - started


async def start_auth_stack(*, start_gateway: Any, start_oidc_provider: Any, database_url: str, issuer: Any,
                           front_port: int | None = None, accounts: dict[str, Any] | None = None,
                           kubeconfig: str = "", auth_overrides: dict[str, Any] | None = None,
                           http_workers: int = 0, **settings_overrides: Any) -> AuthStack:
    """The oidc-provider, then the auth service (gRPC + HTTP) configured for it.

    ``front_port``: the port browsers use for every host (nginx's); default: the auth service's own.
    ``http_workers``: 0 serves HTTP in the test's process, where a test can look inside (activity, audit
    tasks); production's default runs worker processes, which tests choose explicitly."""
    http_port = free_port()
    front = front_port or http_port
    public = f"http://dashboard.{DOMAIN}:{front}"
    provider = await start_oidc_provider(redirect_uris=[public + "/sign-in-callback"], post_logout=[public + "/"],
                                         accounts=accounts)
    settings = make_settings(
        database_url, issuer, domain=DOMAIN,
        oidc={"issuer": provider.issuer, "audience": [issuer.audience], "client_id": CLIENT_ID,
              "client_secret": CLIENT_SECRET},
        auth={"http_listen": f"127.0.0.1:{http_port}", "public_url": public, "cookie_secure": False,
              "session_keys": [SESSION_KEY], "allow_http_redirects": True, "http_workers": http_workers,
              **(auth_overrides or {})},
        kubernetes={"kubeconfig": kubeconfig or "/nonexistent/kubeconfig"},
        **settings_overrides)
    gateway = await start_gateway("auth", settings=settings)
    db = Database(database_url, pool_size=2)
    stack = AuthStack(gateway, provider, front, db, issuer)
    assert await stack.service.follower.listener.wait_live(10), "LISTEN connection did not come up"
    return stack
