"""Helpers for usersync tests: rows in the real shared tables, a usersync server wired to the Logto double."""
from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select

from aigc_gateway.config import Settings
from aigc_gateway.db import Database
from aigc_gateway.db.models import DisputedInstanceRow, InstanceRow, UserSyncOutboxRow, notify_instance_change
from aigc_gateway.services.usersync.app import UserSync
from tests.doubles.logto import LogtoDouble
from tests.plugins.gateway import RunningGateway, make_settings
from tests.plugins.kube import wait_for
from tests.plugins.logto import usersync_config

NS = "aigc"


def entry(template: str, instance_id: int, namespace: str = NS) -> dict[str, str]:
    """An entry in the original AIGC-Gateway format."""
    return {"Name": template, "Namespace": namespace, "ID": str(instance_id)}


def settings_for(database_url: str, issuer: Any, logto: LogtoDouble, **usersync: Any) -> Settings:
    return make_settings(database_url, issuer, usersync=usersync_config(logto, **usersync))


def now() -> datetime:
    return datetime.now(UTC)


async def outbox(db: Database, user: str, template: str, instance_id: int | None, namespace: str = NS) -> int:
    """What the instance service writes with each ownership change (instance_id None: the key goes)."""
    async with db.session() as session:
        return await _add_outbox(session, user, template, instance_id, namespace)


async def _add_outbox(session: Any, user: str, template: str, instance_id: int | None, namespace: str) -> int:
    row = UserSyncOutboxRow(user=user, namespace=namespace, template=template, instance_id=instance_id,
                            created_at=now(), attempts=0, last_error="")
    session.add(row)
    await session.flush()
    return row.id


async def own(db: Database, template: str, instance_id: int, owner: str | None, slot: str = "LIVE",
              namespace: str = NS) -> None:
    """Set one slot row as the instance service would (owner set exactly while LIVE/PAUSED)."""
    async with db.session() as session:
        await _set_slot(session, template, instance_id, owner, slot, namespace)


async def _set_slot(session: Any, template: str, instance_id: int, owner: str | None, slot: str,
                    namespace: str) -> None:
    row = await session.get(InstanceRow, (namespace, template, instance_id))
    if row is None:
        row = InstanceRow(namespace=namespace, template=template, id=instance_id, created_at=now(), orphaned=False)
        session.add(row)
    row.slot, row.owner, row.updated_at, row.state_changed_at = slot, owner, now(), now()
    await notify_instance_change(session, namespace, template, instance_id)


async def dispute(db: Database, template: str, instance_id: int, claimants: list[str], state: str = "LIVE",
                  namespace: str = NS) -> None:
    """A dispute as ImportFromLogto records it: no slot row, the claimants named."""
    async with db.session() as session:
        session.add(DisputedInstanceRow(namespace=namespace, template=template, id=instance_id,
                                        claimants=claimants, state=state, created_at=now()))


async def install(db: Database, user: str, template: str, instance_id: int, namespace: str = NS) -> None:
    # One transaction, as the instance service does: the NOTIFY is delivered at commit, with the outbox row.
    async with db.session() as session:
        await _set_slot(session, template, instance_id, user, "LIVE", namespace)
        await _add_outbox(session, user, template, instance_id, namespace)


async def uninstall(db: Database, user: str, template: str, instance_id: int, namespace: str = NS) -> None:
    async with db.session() as session:
        await _set_slot(session, template, instance_id, None, "RELEASING", namespace)
        await _add_outbox(session, user, template, None, namespace)


async def outbox_rows(db: Database, user: str | None = None) -> list[UserSyncOutboxRow]:
    async with db.session() as session:
        stmt = select(UserSyncOutboxRow).order_by(UserSyncOutboxRow.id)
        if user is not None:
            stmt = stmt.where(UserSyncOutboxRow.user == user)
        return list((await session.execute(stmt)).scalars())


async def instances(db: Database) -> dict[tuple[str, str, int], InstanceRow]:
    async with db.session() as session:
        rows = (await session.execute(select(InstanceRow))).scalars()
        return {(r.namespace, r.template, r.id): r for r in rows}


async def drained(db: Database, timeout: float = 20) -> None:
    async def done() -> bool:
        return all(r.delivered_at is not None for r in await outbox_rows(db))

    await wait_for(done, timeout=timeout, interval=0.1, what="the outbox to drain")


def usersync_of(gateway: RunningGateway) -> UserSync:
    return gateway.service("usersync", UserSync)


class Standalone:
    """usersync's parts without its server or background loops, for tests that drive them step by step."""

    def __init__(self, settings: Settings):
        from aigc_gateway.runtime import Runtime

        self.runtime = Runtime.create(settings)
        self.usersync = UserSync(self.runtime)

    async def __aenter__(self) -> UserSync:
        return self.usersync

    async def __aexit__(self, *exc: object) -> None:
        await self.usersync.stop()
        await self.runtime.close()
