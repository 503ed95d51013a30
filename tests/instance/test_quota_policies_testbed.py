"""Stored quota policies enforced on the test bed and PostgreSQL (issue 16): every scope set or cleared through the
admin API moves the next install's or resume's outcome exactly at its boundary; installs an admin makes for
another user and CheckConsistency judge that user with the roles they last acted with; a limit lowered while a
resume waits for the user's quota lock is the one that resume is judged by (the lock held by the test)."""
from __future__ import annotations

import asyncio
from typing import Any

import pytest
from google.protobuf import field_mask_pb2
from sqlalchemy import text

from aigc_gateway.api.v1 import instance_pb2
from aigc_gateway.db import Database
from aigc_gateway.locks import lock_key

from ..plugins.gateway import bearer
from .conftest import create_template
from .test_quotas_testbed import GPU, owned, refused, settings_with

pytestmark = pytest.mark.testbed
Q = instance_pb2.QuotaValue


def as_(issuer: Any, user: str, *roles: str) -> Any:
    return bearer(issuer.mint(user, roles=list(roles)))


async def policy(c: Any, name: str, **values: int | None) -> None:
    """Store ``values`` (None: unlimited; -1: back to inheriting) on the policy ``name``, as the admin."""
    message = instance_pb2.QuotaPolicy(name=name)
    for field, value in values.items():
        if value is None:
            getattr(message, field).CopyFrom(Q(unlimited=True))
        elif value >= 0:
            getattr(message, field).CopyFrom(Q(maximum=value))
    await c.stub.UpdateQuotaPolicy(instance_pb2.UpdateQuotaPolicyRequest(
        quota_policy=message, update_mask=field_mask_pb2.FieldMask(paths=list(values))), metadata=c.md("admin"))


async def test_each_stored_scope_moves_the_boundary(testbed, game, start_gateway, client_for, database_url, issuer,
                                                    database: Database, k8s_namespace: str) -> None:
    ns = k8s_namespace
    await asyncio.gather(*(create_template(game, testbed, n, GPU) for n in ("g1", "g2", "g3", "g4", "g5", "g6")))
    gw = await start_gateway("instance", settings=settings_with(database_url, issuer, testbed, ns, {}))
    c = client_for(gw.channel("instance"))

    # Default: running 1 refuses alice's second running instance; her own "unlimited" overrides the default.
    await c.install("alice", "g1")
    await policy(c, "quotaPolicies/default", running=1)
    assert await refused(c.install("alice", "g2")) == [("user:alice", "running: usage 1, maximum 1")]
    assert "g2" not in await owned(database, "alice")
    await policy(c, "users/alice/quotaPolicy", running=None)
    a2 = await c.install("alice", "g2")
    await policy(c, "users/alice/quotaPolicy", running=-1)  # cleared: the default again
    await c.pause("alice", a2.name)
    assert await refused(c.resume("alice", a2.name)) == [("user:alice", "running: usage 1, maximum 1")]

    # Role: lab's 2 lets alice resume when her token carries lab; the user's own 1 beats the role's.
    await policy(c, "roles/lab/quotaPolicy", running=2)
    resume = instance_pb2.ResumeInstanceRequest(name=a2.name)
    await c.stub.ResumeInstance(resume, metadata=as_(issuer, "alice", "lab"))
    await c.pause("alice", a2.name)
    await policy(c, "users/alice/quotaPolicy", running=1)
    assert await refused(c.stub.ResumeInstance(resume, metadata=as_(issuer, "alice", "lab"))) == [
        ("user:alice", "running: usage 1, maximum 1")]
    await policy(c, "users/alice/quotaPolicy", running=-1)
    await c.stub.ResumeInstance(resume, metadata=as_(issuer, "alice", "lab"))

    # Templates: g3's own 1; every other template 0; the specific one wins over `-`; cleared, nothing limits.
    await policy(c, "quotaPolicies/default", running=-1)
    await policy(c, f"namespaces/{ns}/templates/g3/quotaPolicy", running=1)
    await policy(c, "namespaces/-/templates/-/quotaPolicy", running=0)
    await c.install("bob", "g3")
    assert await refused(c.install("carol", "g3")) == [(f"template:{ns}/g3", "template_running: usage 1, maximum 1")]
    assert await refused(c.install("carol", "g4")) == [(f"template:{ns}/g4", "template_running: usage 0, maximum 0")]
    await policy(c, "namespaces/-/templates/-/quotaPolicy", running=-1)
    await c.install("carol", "g4")
    assert (await owned(database, "carol")) == {"g4": "LIVE"}

    # An admin installing for erin: erin's recorded roles (lab, from her own call) apply; frank, never seen,
    # has none. Default installed 1, lab 2.
    await policy(c, "quotaPolicies/default", installed=1)
    await policy(c, "roles/lab/quotaPolicy", installed=2)
    parent = f"namespaces/{ns}/templates/"
    await c.stub.CreateInstance(instance_pb2.CreateInstanceRequest(parent=parent + "g5"),
                                metadata=as_(issuer, "erin", "lab"))
    await c.install("admin", "g6", owner="erin")
    await c.install("admin", "g5", owner="frank")
    assert await refused(c.install("admin", "g6", owner="frank")) == [("user:frank", "installed: usage 1, maximum 1")]
    assert (await owned(database, "erin")) == {"g5": "LIVE", "g6": "LIVE"}

    # CheckConsistency judges erin with lab too: within 2; over once lab is lowered. power's 10 (a role erin
    # does not have) no longer hides her, as "the most generous configured role" did.
    await policy(c, "roles/power/quotaPolicy", installed=10)
    assert not [n for n in (await c.check()).notices if n.template == "user:erin"]
    await policy(c, "roles/lab/quotaPolicy", installed=1)
    notices = [(n.template, n.description) for n in (await c.check()).notices if n.code == "OVER_QUOTA"]
    assert ("user:erin", "instances installed 2 of 1") in notices
    assert (await owned(database, "erin")) == {"g5": "LIVE", "g6": "LIVE"}  # lowering paused nothing


async def test_a_limit_lowered_while_a_resume_waits_for_the_user_lock_applies(
        testbed, game, start_gateway, client_for, database_url, issuer, database: Database,
        k8s_namespace: str) -> None:
    ns = k8s_namespace
    await asyncio.gather(*(create_template(game, testbed, n, GPU) for n in ("w1", "w2")))
    gw = await start_gateway("instance", settings=settings_with(database_url, issuer, testbed, ns,
                                                                {"default": {"running": 2}}))
    c = client_for(gw.channel("instance"))
    await c.install("alice", "w1")
    w2 = await c.install("alice", "w2")
    await c.pause("alice", w2.name)

    async with database.session() as held:  # the test holds alice's quota lock, as another replica's call would
        await held.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": lock_key("quota:alice")})
        resume = asyncio.ensure_future(c.resume("alice", w2.name))
        async with asyncio.timeout(60):  # a bound on a hang, not a correctness bar
            while not (await database_waiters(database)):
                assert not resume.done(), resume
                await asyncio.sleep(0.05)
        await policy(c, "users/alice/quotaPolicy", running=1)  # does not need alice's quota lock
        assert not resume.done()
    assert await refused(resume) == [("user:alice", "running: usage 1, maximum 1")]
    assert (await owned(database, "alice")) == {"w1": "LIVE", "w2": "PAUSED"}


async def database_waiters(database: Database) -> int:
    """Sessions of this test's database waiting for an advisory lock."""
    async with database.session() as session:
        return int((await session.execute(text(
            "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
            "WHERE l.locktype = 'advisory' AND NOT l.granted AND d.datname = current_database()"))).scalar_one())
