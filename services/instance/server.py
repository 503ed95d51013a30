"""gRPC mapping of the InstanceService: requests in, domain calls, messages out.

Authentication, request ids, replay of `request_id`, audit events and error
mapping happen around every call in the core interceptor; this module adds
the instance details to the audit event with ``audit.note``. Mutating calls
pass their replay claim (``idempotency.current_claim``) to the lifecycle and
answer from the effect it returns (services/instance/effects.py): the rows the
step wrote under the template lock, or, for a retry that took over a dead
replica's call, what that call had committed.
"""
from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from google.protobuf import empty_pb2

from aigc_gateway import audit
from aigc_gateway.api.v1 import instance_pb2, instance_pb2_grpc
from aigc_gateway.errors import PermissionDenied, Unavailable
from aigc_gateway.idempotency import IdempotencyStore, current_claim
from aigc_gateway.identity import require_admin, require_principal
from aigc_gateway.names import parse_instance, parse_list_parent, parse_template

from . import access, messages, quota_messages
from .idle_api import create_exemption, delete_exemption, keep_alive, list_exemptions
from .quota_policies import PolicyStore, parse_scope

if TYPE_CHECKING:
    from .app import InstanceService


class InstanceServicer(instance_pb2_grpc.InstanceServiceServicer):
    def __init__(self, service: InstanceService):
        self.service = service

    async def CreateInstance(self, request: instance_pb2.CreateInstanceRequest, context: Any) -> instance_pb2.Instance:
        ref = parse_template(request.parent, "parent")
        principal = require_principal()
        owner = access.install_owner(principal, request.owner)
        lifecycle, _, _ = self.service.parts()
        audit.note(owner=owner)
        claim = current_claim.get()
        # Another owner's roles are not in this call: their recorded ones apply (quota_policies.RoleStore).
        roles = principal.roles if principal.kind == "user" and owner == principal.subject else None
        effect = claim.effect if claim and claim.effect else await lifecycle.install(ref, owner, claim, roles)
        instance_id = int(effect["row"]["id"])
        audit.note(instance=ref.instance(instance_id).name, id=instance_id)
        return await self.service.reads.answer(effect)

    async def GetInstance(self, request: instance_pb2.GetInstanceRequest, context: Any) -> instance_pb2.Instance:
        ref = parse_instance(request.name)
        row = access.check(require_principal(), ref, await self.service.store.get(ref))
        return await self.service.reads.describe(ref, row)

    async def ListInstances(self, request: instance_pb2.ListInstancesRequest,
                            context: Any) -> instance_pb2.ListInstancesResponse:
        namespace, template = parse_list_parent(request.parent)
        return await self.service.reads.list(require_principal(), namespace, template, request.owner, request.state,
                                       request.page_size, request.page_token)

    async def PauseInstance(self, request: instance_pb2.PauseInstanceRequest, context: Any) -> instance_pb2.Instance:
        ref = parse_instance(request.name)
        lifecycle, _, _ = self.service.parts()
        claim = current_claim.get()
        effect = claim.effect if claim and claim.effect else await lifecycle.pause(ref, require_principal(), claim)
        audit.note(owner=effect["row"]["owner"])
        return await self.service.reads.answer(effect)

    async def ResumeInstance(self, request: instance_pb2.ResumeInstanceRequest,
                             context: Any) -> instance_pb2.Instance:
        ref = parse_instance(request.name)
        lifecycle, _, _ = self.service.parts()
        claim = current_claim.get()
        effect = claim.effect if claim and claim.effect else await lifecycle.resume(ref, require_principal(), claim)
        audit.note(owner=effect["row"]["owner"])
        return await self.service.reads.answer(effect)

    async def RestartInstance(self, request: instance_pb2.RestartInstanceRequest,
                              context: Any) -> instance_pb2.Instance:
        ref = parse_instance(request.name)
        lifecycle, _, _ = self.service.parts()
        effect = await lifecycle.restart(ref, require_principal(), current_claim.get())
        if self.service.culler is not None:  # a restart is activity: the idle clock starts again
            await self.service.culler.keep(ref, source="restart")
        return await self.service.reads.answer(effect)

    async def UpdateInstance(self, request: instance_pb2.UpdateInstanceRequest, context: Any) -> instance_pb2.Instance:
        ref = parse_instance(request.name)
        self.service.parts()
        if self.service.rollouts is None:
            raise Unavailable("the instance service is starting", reason="STARTING", retry_after=1.0)
        await self.service.rollouts.request(ref, require_principal(), current_claim.get())
        return await self.service.reads.describe(ref)

    async def KeepInstanceAlive(self, request: instance_pb2.KeepInstanceAliveRequest,
                                context: Any) -> instance_pb2.Instance:
        ref = parse_instance(request.name)
        self.service.parts()
        if self.service.culler is None:
            raise Unavailable("the instance service is starting", reason="STARTING", retry_after=1.0)
        await keep_alive(self.service.culler, require_principal(), ref)
        return await self.service.reads.describe(ref)

    async def CreateIdleExemption(self, request: instance_pb2.CreateIdleExemptionRequest,
                                  context: Any) -> instance_pb2.IdleExemption:
        principal = require_admin()
        found = await create_exemption(self.service.runtime.db, principal, request.idle_exemption.name,
                                                request.idle_exemption.reason)
        audit.note(user=found.user, reason=found.reason)
        return messages.exemption(found)

    async def ListIdleExemptions(self, request: instance_pb2.ListIdleExemptionsRequest,
                                 context: Any) -> instance_pb2.ListIdleExemptionsResponse:
        require_admin()
        found, token = await list_exemptions(self.service.runtime.db, request.page_size, request.page_token)
        return messages.exemption_list(found, token)

    async def DeleteIdleExemption(self, request: instance_pb2.DeleteIdleExemptionRequest,
                                  context: Any) -> empty_pb2.Empty:
        require_admin()
        audit.note(user=await delete_exemption(self.service.runtime.db, request.name))
        return empty_pb2.Empty()

    async def DeleteInstance(self, request: instance_pb2.DeleteInstanceRequest,
                             context: Any) -> instance_pb2.Instance:
        ref = parse_instance(request.name)
        lifecycle, _, _ = self.service.parts()
        claim = current_claim.get()
        if claim and claim.effect:  # the first attempt's uninstall was committed: finish its disk deletion
            effect, freed = claim.effect, await lifecycle.finish_uninstall(ref)
        else:
            effect, freed = await lifecycle.uninstall(ref, require_principal(), claim)
        audit.note(owner=effect["row"]["owner"], disks_deleted=freed)
        return await self.service.reads.answer(effect, freed=freed)

    async def WatchInstance(self, request: instance_pb2.WatchInstanceRequest,
                            context: Any) -> AsyncIterator[instance_pb2.InstanceEvent]:
        ref = parse_instance(request.name)
        async for event in self.service.reads.watch(require_principal(), ref):
            yield event

    async def PurgeInstances(self, request: instance_pb2.PurgeInstancesRequest,
                             context: Any) -> instance_pb2.PurgeInstancesResponse:
        ref = parse_template(request.parent, "parent")
        require_admin()
        lifecycle, _, _ = self.service.parts()
        owned = await lifecycle.purge(ref)
        audit.note(forgotten=len(owned))
        return messages.purged(ref, owned)

    async def CheckConsistency(self, request: instance_pb2.CheckConsistencyRequest,
                               context: Any) -> instance_pb2.CheckConsistencyResponse:
        namespace, template = parse_list_parent(request.parent)
        require_admin()
        _, _, checker = self.service.parts()
        refs = await checker.templates(namespace, template)
        findings = [finding for ref in refs for finding in await checker.check(ref)]
        return messages.consistency(len(refs), findings, await checker.over_quota(refs))

    async def GetQuotaUsage(self, request: instance_pb2.GetQuotaUsageRequest,
                            context: Any) -> instance_pb2.QuotaUsage:
        principal = require_principal()
        user = principal.subject if request.user in ("", "me") else request.user
        if user != principal.subject and not principal.admin:
            raise PermissionDenied("only admins read other users' quota usage", reason="ADMIN_REQUIRED")
        lifecycle, _, _ = self.service.parts()
        quotas = lifecycle.quotas
        roles = principal.roles if principal.kind == "user" and user == principal.subject else None
        rows = await quotas.report(user, roles, await quotas.usage(user))
        return messages.quota_usage(user, rows)

    # -- quota policies (admin; docs/quotas.md) ----------------------------------------------------------

    async def GetQuotaPolicy(self, request: instance_pb2.GetQuotaPolicyRequest,
                             context: Any) -> instance_pb2.QuotaPolicy:
        require_admin()
        scope = parse_scope(request.name, "name")
        stored = await PolicyStore(self.service.runtime.db).get(scope)
        return quota_messages.to_proto(stored, quota_messages.configured(self.service.cfg.quotas, scope))

    async def ListQuotaPolicies(self, request: instance_pb2.ListQuotaPoliciesRequest,
                                context: Any) -> instance_pb2.ListQuotaPoliciesResponse:
        require_admin()
        stored = await PolicyStore(self.service.runtime.db).load()
        return quota_messages.page(quota_messages.every_scope(self.service.cfg.quotas, stored),
                                   request.page_size, request.page_token)

    async def UpdateQuotaPolicy(self, request: instance_pb2.UpdateQuotaPolicyRequest,
                                context: Any) -> instance_pb2.QuotaPolicy:
        principal = require_admin()
        scope, changes = quota_messages.changes_of(request)
        audit.note(policy=scope.name, changes=quota_messages.words(changes))
        store, claim = PolicyStore(self.service.runtime.db), current_claim.get()

        async def record(session: Any, stored: Any) -> None:
            await IdempotencyStore.commit_effect(
                session, claim, {"op": "quota_policy", "name": scope.name, "version": stored.version})

        if claim is not None and claim.effect is not None:  # the first attempt committed: answer with the policy
            stored = await store.get(scope)
        else:
            stored = await store.update(scope, changes, request.quota_policy.etag, principal.subject, record)
        audit.note(version=stored.version)
        return quota_messages.to_proto(stored, quota_messages.configured(self.service.cfg.quotas, scope))
