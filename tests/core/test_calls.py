"""The call interceptor on a real server and a real PostgreSQL: replay of
request ids, audit of every mutating call and every refusal, error mapping."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf import timestamp_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from sqlalchemy import text

from aigc_gateway import audit
from aigc_gateway.api.v1 import audit_pb2, audit_pb2_grpc, usersync_pb2, usersync_pb2_grpc
from aigc_gateway.db import Database
from aigc_gateway.errors import FailedPrecondition, InvalidArgument, PermissionDenied, Unavailable, Violation
from aigc_gateway.server import Registration, ServiceParts

from ..plugins.gateway import bearer
from ..served import free_port


class ScriptedUserSync(usersync_pb2_grpc.UserSyncServiceServicer):
    """A test servicer whose behaviour depends on the user field; counts real executions."""

    def __init__(self, database_url: str = "") -> None:
        self.calls: list[str] = []
        self.database_url = database_url

    async def SyncUser(self, request, context):  # noqa: N802 - gRPC method name
        self.calls.append(request.user)
        if request.user.startswith("forbidden"):
            raise PermissionDenied("not yours", reason="NOT_OWNER")
        if request.user.startswith("precondition"):
            raise FailedPrecondition("template is not ReserveIds", reason="NOT_RESERVE_IDS")
        if request.user.startswith("flaky"):
            raise Unavailable("Logto is down", retry_after=2.5)
        if request.user.startswith("bad"):
            raise InvalidArgument("bad user", violations=[Violation("user", "must not start with bad")])
        if request.user.startswith("crash"):
            raise RuntimeError("database password is hunter2")
        if request.user.startswith("dbgone"):  # a server that is not there (stopped, restarting)
            await _query(Database(f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/postgres"))
        if request.user.startswith("dblost"):  # the connection dropped under the call (a crash, a failover)
            await _query(Database(self.database_url), dropped=True)
        audit.note(changed=len(self.calls), client_secret="s3cr3t")
        return usersync_pb2.SyncUserResponse(changed=True, changes=[usersync_pb2.CustomDataEntry(
            user=request.user, id=len(self.calls))])

    async def CleanupTemplate(self, request, context):  # noqa: N802
        return usersync_pb2.CleanupTemplateResponse(users=["a"])


async def _query(database: Database, *, dropped: bool = False) -> None:
    try:
        async with database.session() as session:
            if dropped:
                pid = (await session.execute(text("SELECT pg_backend_pid()"))).scalar_one()
                async with database.session() as other:
                    await other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            await session.execute(text("SELECT 1"))
    finally:
        await database.close()


@pytest.fixture
async def scripted(start_gateway, issuer, database_url):
    servicer = ScriptedUserSync(database_url)
    parts = ServiceParts([Registration("aigc.gateway.v1.UserSyncService", servicer,
                                       usersync_pb2_grpc.add_UserSyncServiceServicer_to_server,
                                       base=usersync_pb2_grpc.UserSyncServiceServicer)])
    gateway = await start_gateway("usersync", parts={"usersync": parts})
    channel = gateway.channel("usersync")
    return (servicer, usersync_pb2_grpc.UserSyncServiceStub(channel), audit_pb2_grpc.AuditServiceStub(channel),
            bearer(issuer.mint("root", roles=["admin"])))


async def test_replay_returns_first_outcome_without_running_again(scripted) -> None:
    servicer, stub, _, admin = scripted
    first = await stub.SyncUser(usersync_pb2.SyncUserRequest(user="u1", request_id="r-1"), metadata=admin)
    again = await stub.SyncUser(usersync_pb2.SyncUserRequest(user="u1", request_id="r-1"), metadata=admin)
    assert again == first and servicer.calls == ["u1"]
    fresh = await stub.SyncUser(usersync_pb2.SyncUserRequest(user="u1", request_id="r-2"), metadata=admin)
    assert fresh.changes[0].id == 2 and servicer.calls == ["u1", "u1"]
    # No request id: no replay protection.
    await stub.SyncUser(usersync_pb2.SyncUserRequest(user="u1"), metadata=admin)
    await stub.SyncUser(usersync_pb2.SyncUserRequest(user="u1"), metadata=admin)
    assert len(servicer.calls) == 4


async def test_replay_of_a_refusal_and_reuse_with_other_request(scripted) -> None:
    servicer, stub, _, admin = scripted
    for _ in range(2):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.SyncUser(usersync_pb2.SyncUserRequest(user="precondition", request_id="r-9"), metadata=admin)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert servicer.calls == ["precondition"]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.SyncUser(usersync_pb2.SyncUserRequest(user="other", request_id="r-9"), metadata=admin)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    bad = error_details_pb2.BadRequest()
    assert any(d.Unpack(bad) for d in rpc_status.from_call(err.value).details)
    assert bad.field_violations[0].field == "request_id"


async def test_retryable_outcomes_are_not_stored(scripted) -> None:
    servicer, stub, _, admin = scripted
    for _ in range(2):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.SyncUser(usersync_pb2.SyncUserRequest(user="flaky", request_id="r-3"), metadata=admin)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        retry = error_details_pb2.RetryInfo()
        assert any(d.Unpack(retry) for d in rpc_status.from_call(err.value).details)
        assert retry.retry_delay.seconds == 2 and retry.retry_delay.nanos == 500_000_000
    assert servicer.calls == ["flaky", "flaky"]


async def test_errors_carry_details_and_internal_hides_everything(scripted) -> None:
    _, stub, _, admin = scripted
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.SyncUser(usersync_pb2.SyncUserRequest(user="bad"), metadata=admin)
    bad = error_details_pb2.BadRequest()
    assert any(d.Unpack(bad) for d in rpc_status.from_call(err.value).details)
    assert (bad.field_violations[0].field, bad.field_violations[0].description) == ("user", "must not start with bad")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.SyncUser(usersync_pb2.SyncUserRequest(user="crash"), metadata=admin)
    assert err.value.code() == grpc.StatusCode.INTERNAL
    assert "hunter2" not in err.value.details() and "Traceback" not in err.value.details()
    assert ("x-request-id" in dict(err.value.trailing_metadata()))


@pytest.mark.parametrize("user", ["dbgone", "dblost"])
async def test_a_database_that_went_away_is_unavailable_and_the_retry_runs_again(scripted, user: str) -> None:
    """Not INTERNAL (a bug, not worth a client's retry): the same call may succeed once the server is back."""
    servicer, stub, _, admin = scripted
    for _ in range(2):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.SyncUser(usersync_pb2.SyncUserRequest(user=user, request_id="r-db"), metadata=admin)
        info = error_details_pb2.ErrorInfo()
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert any(d.Unpack(info) for d in rpc_status.from_call(err.value).details)
        assert info.reason == "DATABASE_UNAVAILABLE"
    assert servicer.calls == [user, user]  # not stored: the retry ran again


async def _all_events(audit_stub, admin, **filters) -> list[audit_pb2.AuditEvent]:
    request = audit_pb2.ListAuditEventsRequest(**filters)
    return list((await audit_stub.ListAuditEvents(request, metadata=admin)).audit_events)


async def test_audit_filters_and_paging(scripted, issuer) -> None:
    _, stub, audit_stub, admin = scripted
    alice = bearer(issuer.mint("alice", roles=["admin"]))
    before = datetime.now(UTC) - timedelta(seconds=1)
    for user in ("u1", "u2", "u3"):
        await stub.SyncUser(usersync_pb2.SyncUserRequest(user=user, request_id=f"a-{user}"), metadata=alice)
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.SyncUser(usersync_pb2.SyncUserRequest(user="forbidden"), metadata=alice)
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.SyncUser(usersync_pb2.SyncUserRequest(user="precondition"), metadata=admin)
    await stub.CleanupTemplate(usersync_pb2.CleanupTemplateRequest(template="namespaces/ns1/templates/sd-cpu"),
                               metadata=admin)
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.SyncUser(usersync_pb2.SyncUserRequest(user="u1"), metadata=bearer("garbage"))
    after = datetime.now(UTC) + timedelta(seconds=1)

    everything = await _all_events(audit_stub, admin)
    assert [e.action for e in everything] == ["UserSyncService.SyncUser", "UserSyncService.CleanupTemplate",
                                              "UserSyncService.SyncUser", "UserSyncService.SyncUser",
                                              "UserSyncService.SyncUser", "UserSyncService.SyncUser",
                                              "UserSyncService.SyncUser"]  # newest first
    assert [e.actor for e in await _all_events(audit_stub, admin, actor="alice")] == ["alice"] * 4
    assert {e.resource for e in await _all_events(audit_stub, admin, action="UserSyncService.CleanupTemplate")} == {
        "namespaces/ns1/templates/sd-cpu"}
    assert len(await _all_events(audit_stub, admin, template="namespaces/ns1/templates/sd-cpu")) == 1
    assert [e.resource for e in await _all_events(audit_stub, admin, instance="u2")] == ["u2"]
    denied = await _all_events(audit_stub, admin, outcome=audit_pb2.AuditEvent.DENIED)
    assert sorted((e.actor, e.error_code) for e in denied) == [("alice", "PERMISSION_DENIED"),
                                                               ("anonymous", "UNAUTHENTICATED")]
    failed = await _all_events(audit_stub, admin, outcome=audit_pb2.AuditEvent.FAILURE)
    assert [(e.actor, e.error_code) for e in failed] == [("root", "FAILED_PRECONDITION")]
    first = everything[-1]
    assert first.request_id and first.service == "usersync" and first.actor_kind == "user"
    assert first.details["changed"] == 1 and first.details["client_secret"] == "[redacted]"

    start, end = timestamp_pb2.Timestamp(), timestamp_pb2.Timestamp()
    start.FromDatetime(before)
    end.FromDatetime(after)
    assert len(await _all_events(audit_stub, admin, start_time=start, end_time=end)) == 7
    assert await _all_events(audit_stub, admin, end_time=start) == []

    seen, token = [], ""
    while True:
        page = await audit_stub.ListAuditEvents(audit_pb2.ListAuditEventsRequest(page_size=3, page_token=token),
                                                metadata=admin)
        assert len(page.audit_events) <= 3
        seen.extend(e.name for e in page.audit_events)
        token = page.next_page_token
        if not token:
            break
    assert seen == [e.name for e in everything]
    page = await audit_stub.ListAuditEvents(audit_pb2.ListAuditEventsRequest(page_size=2), metadata=admin)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await audit_stub.ListAuditEvents(audit_pb2.ListAuditEventsRequest(
            page_size=2, page_token=page.next_page_token, actor="alice"), metadata=admin)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_service_to_service_calls_keep_the_end_user(start_gateway, issuer) -> None:
    """A service calling another on a user's behalf forwards the user; background work is the service."""
    from aigc_gateway.api.v1 import auth_pb2, auth_pb2_grpc, template_pb2, template_pb2_grpc

    holder = {}

    class Relay(template_pb2_grpc.TemplateServiceServicer):
        async def ListTemplates(self, request, context):  # noqa: N802
            runtime = holder["gateway"].runtime
            me = await auth_pb2_grpc.AuthServiceStub(runtime.channel("auth")).WhoAmI(
                auth_pb2.WhoAmIRequest(), metadata=runtime.call_metadata("template"))
            return template_pb2.ListTemplatesResponse(next_page_token=f"{me.subject}|{me.kind}")

    parts = ServiceParts([Registration("aigc.gateway.v1.TemplateService", Relay(),
                                       template_pb2_grpc.add_TemplateServiceServicer_to_server,
                                       base=template_pb2_grpc.TemplateServiceServicer)])
    gateway = await start_gateway("template", "auth", parts={"template": parts})
    holder["gateway"] = gateway
    reply = await template_pb2_grpc.TemplateServiceStub(gateway.channel("template")).ListTemplates(
        template_pb2.ListTemplatesRequest(parent="namespaces/-"), metadata=bearer(issuer.mint("dave")))
    assert reply.next_page_token == f"dave|{auth_pb2.Principal.USER}"
    # Outside any call (background work) the service credential is used.
    me = await auth_pb2_grpc.AuthServiceStub(gateway.runtime.channel("auth")).WhoAmI(
        auth_pb2.WhoAmIRequest(), metadata=gateway.runtime.call_metadata("instance"))
    assert (me.subject, me.kind) == ("service:instance", auth_pb2.Principal.SERVICE)


def test_only_a_lost_database_is_unreachable() -> None:
    """A constraint, a cancelled statement or a bug stays INTERNAL; a lost connection is found through SQLAlchemy's
    wrapping and through an exception's cause."""
    import asyncpg
    from sqlalchemy.exc import DBAPIError, IntegrityError

    from aigc_gateway.db import unreachable

    wrapped = DBAPIError("SELECT 1", {}, asyncpg.ConnectionDoesNotExistError("connection was closed"))
    caused = RuntimeError("during the claim")
    caused.__cause__ = asyncpg.CannotConnectNowError("the database system is starting up")
    assert [unreachable(e) for e in (ConnectionRefusedError(), wrapped, caused)] == [True, True, True]
    not_lost = (IntegrityError("INSERT", {}, asyncpg.UniqueViolationError("duplicate key")),
                asyncpg.QueryCanceledError("canceling statement due to statement timeout"), ValueError("bug"))
    assert [unreachable(e) for e in not_lost] == [False, False, False]
