"""The quota policy admin API on PostgreSQL (issue 16): GetQuotaPolicy, ListQuotaPolicies, UpdateQuotaPolicy.

Stored limits over configuration, field masks, etags (ABORTED), request_id replay, admins only, bad input
INVALID_ARGUMENT naming the field, a hand-made bad row that breaks nobody's list, the audit event; and the
effective limits GetQuotaUsage answers with (stored over configured, unlimited over a lower default, role vs
user precedence, the roles a user last acted with). Enforcement on the test bed: test_quota_policies_testbed.py.
"""
from __future__ import annotations

import statistics
import time
from datetime import UTC, datetime
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from sqlalchemy import select

from aigc_gateway.api.v1 import instance_pb2, instance_pb2_grpc
from aigc_gateway.db import Database
from aigc_gateway.db.models import AuditEventRow
from aigc_gateway.services.instance.models import QuotaPolicyRow
from aigc_gateway.services.instance.quota_policies import RoleStore

from ..plugins.gateway import bearer, make_settings
from .conftest import instance_overrides

QUOTAS = {"default": {"installed": 3, "running": 1}, "roles": {"power": {"running": 4}},
          "users": {"carol": {"gpus": 2}}, "template_running": {"*": 5}}
Q = instance_pb2.QuotaValue


pytestmark = pytest.mark.testbed  # GetQuotaUsage needs the instance service's cluster client (template costs)


@pytest.fixture
async def api(start_gateway, database_url, issuer, testbed, k8s_namespace) -> Any:
    settings = make_settings(database_url, issuer, **instance_overrides(testbed, k8s_namespace, quotas=QUOTAS))
    gw = await start_gateway("instance", settings=settings)
    stub = instance_pb2_grpc.InstanceServiceStub(gw.channel("instance"))

    class Api:
        def md(self, user: str = "root", roles: tuple[str, ...] = ("admin",)) -> Any:
            return bearer(issuer.mint(user, roles=list(roles)))

        async def get(self, name: str, **kw: Any) -> instance_pb2.QuotaPolicy:
            return await stub.GetQuotaPolicy(instance_pb2.GetQuotaPolicyRequest(name=name), metadata=self.md(**kw))

        async def update(self, policy: instance_pb2.QuotaPolicy, *paths: str, request_id: str = "",
                         **kw: Any) -> instance_pb2.QuotaPolicy:
            return await stub.UpdateQuotaPolicy(instance_pb2.UpdateQuotaPolicyRequest(
                quota_policy=policy, update_mask=field_mask_pb2.FieldMask(paths=list(paths)),
                request_id=request_id), metadata=self.md(**kw))

        async def list(self, page_size: int = 0, page_token: str = "") -> instance_pb2.ListQuotaPoliciesResponse:
            return await stub.ListQuotaPolicies(instance_pb2.ListQuotaPoliciesRequest(
                page_size=page_size, page_token=page_token), metadata=self.md())

        async def usage(self, user: str, roles: tuple[str, ...] = ()) -> dict[str, int | None]:
            got = await stub.GetQuotaUsage(instance_pb2.GetQuotaUsageRequest(), metadata=self.md(user, roles))
            return {u.limit: None if u.unlimited else u.maximum for u in got.limits}

        async def usage_of(self, user: str) -> dict[str, int | None]:
            got = await stub.GetQuotaUsage(instance_pb2.GetQuotaUsageRequest(user=user), metadata=self.md())
            return {u.limit: None if u.unlimited else u.maximum for u in got.limits}

    return Api()


def values(policy: instance_pb2.QuotaPolicy) -> dict[str, int | None]:
    out: dict[str, int | None] = {}
    for name in ("installed", "running", "gpus", "gpu_memory_gib"):
        if policy.HasField(name):
            v = getattr(policy, name)
            out[name] = None if v.WhichOneof("value") == "unlimited" else v.maximum
    return out


async def error(call: Any) -> tuple[grpc.StatusCode, list[str], str]:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    fields: list[str] = []
    for detail in rpc_status.from_call(info.value).details:
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            fields += [v.field for v in bad.field_violations]
    return info.value.code(), fields, info.value.details()


async def test_stored_limits_override_configuration_field_by_field(api) -> None:
    default = await api.get("quotaPolicies/default")
    assert values(default) == {} and values(default.configured) == {"installed": 3, "running": 1}
    assert default.etag == "0" and not default.HasField("update_time")
    assert await api.usage("alice") == {"installed": 3, "running": 1, "gpus": None, "gpu_memory_gib": None}

    set_ = await api.update(instance_pb2.QuotaPolicy(name="quotaPolicies/default", running=Q(maximum=2),
                                                     gpus=Q(maximum=1)), "running", "gpus")
    assert values(set_) == {"running": 2, "gpus": 1} and set_.updated_by == "root" and set_.etag == "1"
    assert abs(set_.update_time.ToDatetime(UTC) - datetime.now(UTC)).total_seconds() < 60
    assert await api.usage("alice") == {"installed": 3, "running": 2, "gpus": 1, "gpu_memory_gib": None}

    # Unlimited overrides a lower configured default; clearing (in the mask, absent) inherits again.
    await api.update(instance_pb2.QuotaPolicy(name="quotaPolicies/default", installed=Q(unlimited=True)),
                     "installed", "running")
    assert await api.usage("alice") == {"installed": None, "running": 1, "gpus": 1, "gpu_memory_gib": None}
    got = await api.get("quotaPolicies/default")
    assert values(got) == {"installed": None, "gpus": 1} and got.etag == "2"


async def test_role_and_user_precedence(api, database: Database) -> None:
    # Role over default, the most generous role wins, the user's own over any role.
    await api.update(instance_pb2.QuotaPolicy(name="roles/lab/quotaPolicy", running=Q(maximum=2),
                                              gpus=Q(maximum=3)))
    assert await api.usage("dave", ("lab",)) == {"installed": 3, "running": 2, "gpus": 3, "gpu_memory_gib": None}
    assert (await api.usage("dave", ("lab", "power")))["running"] == 4  # configured role, more generous
    await api.update(instance_pb2.QuotaPolicy(name="roles/power/quotaPolicy", running=Q(maximum=0)), "running")
    assert (await api.usage("dave", ("lab", "power")))["running"] == 2  # the stored 0 replaced power's 4
    await api.update(instance_pb2.QuotaPolicy(name="users/dave/quotaPolicy", gpus=Q(maximum=1)), "gpus")
    assert (await api.usage("dave", ("lab",)))["gpus"] == 1
    await api.update(instance_pb2.QuotaPolicy(name="users/carol/quotaPolicy", gpus=Q(unlimited=True)), "gpus")
    assert (await api.usage("carol"))["gpus"] is None  # stored unlimited over carol's configured 2

    # An admin reading dave's usage has no dave token: the roles dave last acted with apply.
    assert await RoleStore(database).of(["dave"]) == {"dave": ("lab",)}  # his last call's claims
    assert await api.usage_of("dave") == {"installed": 3, "running": 2, "gpus": 1, "gpu_memory_gib": None}
    assert (await api.usage_of("nobody-seen"))["running"] == 1  # never seen: no roles, the default


async def test_etag_conflict_is_aborted_and_request_id_replays(api) -> None:
    first = await api.update(instance_pb2.QuotaPolicy(name="users/erin/quotaPolicy", running=Q(maximum=1),
                                                      etag="0"), "running", request_id="r-1")
    assert first.etag == "1"
    code, _, text = await error(api.update(instance_pb2.QuotaPolicy(
        name="users/erin/quotaPolicy", running=Q(maximum=5), etag="0"), "running"))
    assert code == grpc.StatusCode.ABORTED and "changed since it was read" in text
    assert values(await api.get("users/erin/quotaPolicy")) == {"running": 1}

    await api.update(instance_pb2.QuotaPolicy(name="users/erin/quotaPolicy", running=Q(maximum=2)), "running")
    replayed = await api.update(instance_pb2.QuotaPolicy(name="users/erin/quotaPolicy", running=Q(maximum=1),
                                                         etag="0"), "running", request_id="r-1")
    assert replayed == first  # the first answer, not a second write
    assert (await api.get("users/erin/quotaPolicy")).etag == "2"


async def test_only_admins(api) -> None:
    for call in (api.get("quotaPolicies/default", user="alice", roles=()),
                 api.update(instance_pb2.QuotaPolicy(name="users/alice/quotaPolicy", running=Q(maximum=99)),
                            user="alice", roles=())):
        code, _, _ = await error(call)
        assert code == grpc.StatusCode.PERMISSION_DENIED
    assert values(await api.get("users/alice/quotaPolicy")) == {}


@pytest.mark.parametrize("policy,paths,field", [
    (instance_pb2.QuotaPolicy(name="quotaPolicies/other"), (), "quota_policy.name"),
    (instance_pb2.QuotaPolicy(name="users//quotaPolicy"), (), "quota_policy.name"),
    (instance_pb2.QuotaPolicy(name="namespaces/Bad/templates/t/quotaPolicy"), (), "quota_policy.name"),
    (instance_pb2.QuotaPolicy(name="namespaces/-/templates/t/quotaPolicy"), (), "quota_policy.name"),
    (instance_pb2.QuotaPolicy(), (), "quota_policy.name"),
    (instance_pb2.QuotaPolicy(name="namespaces/ns/templates/t/quotaPolicy", gpus=Q(maximum=1)), (),
     "quota_policy.gpus"),
    (instance_pb2.QuotaPolicy(name="namespaces/-/templates/-/quotaPolicy"), ("installed",), "update_mask"),
    (instance_pb2.QuotaPolicy(name="users/u/quotaPolicy", running=Q(maximum=-1)), ("running",),
     "quota_policy.running.maximum"),
    (instance_pb2.QuotaPolicy(name="users/u/quotaPolicy", running=Q(unlimited=False)), ("running",),
     "quota_policy.running.unlimited"),
    (instance_pb2.QuotaPolicy(name="users/u/quotaPolicy"), ("running", "cpus"), "update_mask"),
])
async def test_bad_input_names_the_field(api, database, policy, paths, field) -> None:
    code, fields, _ = await error(api.update(policy, *paths))
    assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, [field])
    async with database.session() as session:
        assert list((await session.execute(select(QuotaPolicyRow))).scalars()) == []  # nothing half-written
    code, fields, _ = await error(api.get("roles/a/b/quotaPolicy"))
    assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["name"])


async def test_list_skips_a_malformed_row_and_pages(api, database) -> None:
    await api.update(instance_pb2.QuotaPolicy(name="namespaces/ns/templates/big/quotaPolicy", running=Q(maximum=1)))
    await api.update(instance_pb2.QuotaPolicy(name="users/zed/quotaPolicy", installed=Q(maximum=9)), "installed")
    await api.update(instance_pb2.QuotaPolicy(name="users/amy/quotaPolicy"), "installed")  # stores nothing set
    now = datetime.now(UTC)
    async with database.session() as session:  # rows no API call could write
        session.add(QuotaPolicyRow(name="users/bad/oops/quotaPolicy", running=1, version=1, update_time=now))
        session.add(QuotaPolicyRow(name="users/neg/quotaPolicy", running=-7, version=1, update_time=now))
        session.add(QuotaPolicyRow(name="namespaces/ns/templates/x/quotaPolicy", gpus=1, version=1, update_time=now))
    names = [p.name for p in (await api.list()).quota_policies]
    assert names == ["quotaPolicies/default", "roles/power/quotaPolicy", "users/carol/quotaPolicy",
                     "users/zed/quotaPolicy", "namespaces/-/templates/-/quotaPolicy",
                     "namespaces/ns/templates/big/quotaPolicy"]
    paged, token = [], ""
    while True:
        page = await api.list(page_size=4, page_token=token)
        paged += [p.name for p in page.quota_policies]
        token = page.next_page_token
        if not token:
            break
    assert paged == names
    assert (await api.usage("neg"))["running"] == 1  # the bad row is ignored by enforcement too
    code, fields, _ = await error(api.list(page_token="garbage"))
    assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["page_token"])


async def test_update_is_audited_without_secrets(api, database) -> None:
    await api.update(instance_pb2.QuotaPolicy(name="users/fay/quotaPolicy", running=Q(maximum=0),
                                              gpus=Q(unlimited=True)), "running", "gpus", "installed")
    async with database.session() as session:
        events = list((await session.execute(select(AuditEventRow).where(
            AuditEventRow.action == "InstanceService.UpdateQuotaPolicy"))).scalars())
    assert len(events) == 1
    event = events[0]
    assert (event.actor, event.resource, event.outcome) == ("root", "users/fay/quotaPolicy", "SUCCESS")
    assert event.details["changes"] == {"running": "0", "gpus": "unlimited", "installed": "inherit"}
    assert event.details["version"] == 1
    assert "eyJ" not in str(event.details)  # no token


async def test_latency_is_printed(api) -> None:
    """Not a bar: what an admin call and a usage read (which now reads the stored policies) cost here."""
    for label, call in (("UpdateQuotaPolicy", lambda i: api.update(instance_pb2.QuotaPolicy(
            name="users/lat/quotaPolicy", running=Q(maximum=i)), "running")),
                        ("GetQuotaPolicy", lambda i: api.get("users/lat/quotaPolicy")),
                        ("GetQuotaUsage", lambda i: api.usage("lat"))):
        took = []
        for i in range(30):
            started = time.perf_counter()
            await call(i)
            took.append((time.perf_counter() - started) * 1000)
        print(f"{label}: median {statistics.median(took):.1f} ms, max {max(took):.1f} ms over 30")
    assert values(await api.get("users/lat/quotaPolicy")) == {"running": 29}
