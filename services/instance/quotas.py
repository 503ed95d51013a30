"""Quotas: how many instances, how many running, and how much GPU a user and a template may hold (issue 16).

Limits come from configuration (``instance.quotas``) overlaid field by field by the policies admins store
through the API (quota_policies.py): a default for everyone, overrides per role claim and per user, and a
running limit per template. Unset means unlimited. Stored policies are read inside the locks, never cached. A
paused instance counts as installed, not running: its GPU is free, its disk is not. What a running instance
costs is what its template's first container requests (``nvidia.com/gpu`` units, ``aliyun.com/gpu-mem`` GiB),
whether or not the cluster can schedule it.

Enforced where ids are decided: install and resume check usage after the template's allocator step resolved
leftover intents, under the template lock (so two resumes on one template cannot both take the last place).
Per-user limits span templates, so those calls also hold a per-user lock, always taken *before* the template
lock (:meth:`Quotas.locked`). That is deadlock-free: every call takes at most one user lock, always first, and
nothing that holds a template lock ever waits for a user lock (an up batch's runner, ups.py, checks the queued
callers' quotas under the template lock while each caller holds its own user lock, taken before it queued).
The user lock is a process-local asyncio lock, then the PostgreSQL advisory lock ``quota:<user>``
(:class:`aigc_gateway.locks.QueuedLocks`; SQLite has one writer, there the local lock serialises). Calls take it only while some per-user limit is set.

Lowering a limit never pauses or deletes anything: the next install or resume is what is refused.
"""
from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, fields
from typing import Any

from sqlalchemy import select

from aigc_gateway.config import QuotaConfig, QuotaLimits
from aigc_gateway.db import Database
from aigc_gateway.db.models import InstanceRow
from aigc_gateway.errors import NotFound, ResourceExhausted
from aigc_gateway.locks import QueuedLocks
from aigc_gateway.names import TemplateRef
from aigc_gateway.okg import SlotState

from . import templates
from .quota_policies import PolicyStore, RoleStore

LIMITS = ("installed", "running", "gpus", "gpu_memory_gib")
WORDS = {"installed": "instances installed", "running": "instances running",
         "gpus": "nvidia.com/gpu units running", "gpu_memory_gib": "aliyun.com/gpu-mem GiB running",
         "template_running": "instances running"}


@dataclass(frozen=True)
class Limits:
    installed: int | None = None
    running: int | None = None
    gpus: int | None = None
    gpu_memory_gib: int | None = None

    @property
    def any(self) -> bool:
        return any(getattr(self, f) is not None for f in LIMITS)


@dataclass(frozen=True)
class Usage:
    installed: int = 0
    running: int = 0
    gpus: int = 0
    gpu_memory_gib: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))


def _generous(values: Iterable[int | None]) -> int | None:
    listed = list(values)
    limits = [v for v in listed if v is not None]
    return None if len(limits) < len(listed) else max(limits)


Values = dict[str, int | None]  # the limits one scope sets (absent: inherits; None: explicitly unlimited)


@dataclass(frozen=True)
class Policies:
    """Every scope's limits: configuration overlaid field by field by the stored policies (quota_policies.py).
    ``templates`` is keyed ``ns/tpl`` or ``*`` (every template not named) and holds only ``running``."""

    default: Values = field(default_factory=dict)
    roles: Mapping[str, Values] = field(default_factory=dict)
    users: Mapping[str, Values] = field(default_factory=dict)
    templates: Mapping[str, Values] = field(default_factory=dict)

    @classmethod
    def from_config(cls, cfg: QuotaConfig) -> Policies:
        return cls(_set(cfg.default), {r: _set(v) for r, v in cfg.roles.items()},
                   {u: _set(v) for u, v in cfg.users.items()},
                   {k: {"running": v} for k, v in cfg.template_running.items()})

    def overlay(self, stored: Iterable[tuple[str, str, Values]]) -> Policies:
        """These policies with (kind, key, values) stored ones laid over, field by field."""
        default, roles, users, tpls = dict(self.default), dict(self.roles), dict(self.users), dict(self.templates)
        for kind, key, values in stored:
            if kind == "default":
                default = {**default, **values}
            else:
                scopes = {"role": roles, "user": users, "template": tpls}[kind]
                scopes[key] = {**scopes.get(key, {}), **values}
        return Policies(default, roles, users, tpls)


def _set(limits: QuotaLimits) -> Values:
    return {name: getattr(limits, name) for name in LIMITS if name in limits.model_fields_set}


def _policies(cfg: QuotaConfig | Policies) -> Policies:
    return cfg if isinstance(cfg, Policies) else Policies.from_config(cfg)


def limits_for(cfg: QuotaConfig | Policies, user: str, roles: Sequence[str] = ()) -> Limits:
    """The user's limits: the default, then the roles' overrides (the most generous of them), then the user's."""
    p = _policies(cfg)
    out: dict[str, int | None] = {}
    overrides = [p.roles[r] for r in roles if r in p.roles]
    personal = p.users.get(user, {})
    for name in LIMITS:
        value = p.default.get(name)
        set_by_roles = [o[name] for o in overrides if name in o]
        if set_by_roles:
            value = _generous(set_by_roles)
        if name in personal:
            value = personal[name]
        out[name] = value
    return Limits(**out)


def users_limited(cfg: QuotaConfig | Policies) -> bool:
    """Whether any per-user limit is set (else calls skip the user lock and the usage reads)."""
    p = _policies(cfg)
    return any(v is not None for o in [p.default, *p.roles.values(), *p.users.values()] for v in o.values())


def template_limit(cfg: QuotaConfig | Policies, ref: TemplateRef) -> int | None:
    """The template's running limit: its own scope's if set, else the `*` scope's."""
    p = _policies(cfg)
    own = p.templates.get(ref.key, {})
    return own["running"] if "running" in own else p.templates.get("*", {}).get("running")


def cost_of(gss: Mapping[str, Any] | None) -> Usage:
    """What one running instance of the template adds to running usage."""
    if not gss:
        return Usage(running=1)
    acc = templates.accelerator(dict(gss))
    return Usage(running=1, gpus=int(acc.get("gpu_count") or 0), gpu_memory_gib=int(acc.get("gpu_memory_gib") or 0))


def usage_of(slots: Iterable[tuple[str, str]], costs: Mapping[str, Usage]) -> Usage:
    """Usage from (slot, template key) pairs of one user's rows; ``costs`` maps template keys to a running cost."""
    total = Usage()
    for slot, key in slots:
        if slot == SlotState.LIVE.value:
            total = total + Usage(installed=1) + costs.get(key, Usage(running=1))
        elif slot == SlotState.PAUSED.value:
            total = total + Usage(installed=1)
    return total


def exceeded(user: str, limits: Limits, usage: Usage, adding: Usage) -> list[tuple[str, int, int]]:
    """(limit, usage, maximum) of every per-user limit that ``adding`` would pass."""
    out = []
    for name in LIMITS:
        maximum, used, more = getattr(limits, name), getattr(usage, name), getattr(adding, name)
        if maximum is not None and more > 0 and used + more > maximum:
            out.append((name, used, maximum))
    return out


def refusal(action: str, user: str, over: list[tuple[str, int, int]], ref: TemplateRef | None = None
            ) -> ResourceExhausted:
    """RESOURCE_EXHAUSTED with a google.rpc.QuotaFailure violation per limit passed."""
    subject = f"template:{ref.key}" if ref is not None and over[0][0] == "template_running" else f"user:{user}"
    words = [f"{WORDS[name]} {used} of {maximum}" for name, used, maximum in over]
    whose = f"template {ref.name}" if subject.startswith("template:") and ref else user
    name, used, maximum = over[0]
    return ResourceExhausted(
        f"{action} refused: quota of {whose} reached ({'; '.join(words)})", reason="QUOTA_EXCEEDED",
        metadata={"limit": name, "usage": str(used), "maximum": str(maximum), "subject": subject},
        quota=[(subject, f"{name}: usage {u}, maximum {m}") for name, u, m in over])


class Quotas:
    """The I/O around the arithmetic: the user lock, the stored policies and roles, the usage read."""

    def __init__(self, db: Database, cfg: QuotaConfig, template_of: Callable[[TemplateRef], Awaitable[templates.Obj]]):
        self.db = db
        self.cfg = cfg
        self.template_of = template_of
        self.stored = PolicyStore(db)
        self.roles = RoleStore(db)
        self._locks = QueuedLocks(db)

    async def policies(self) -> Policies:
        """Configuration overlaid by the stored policies, read now (never cached: see quota_policies)."""
        return Policies.from_config(self.cfg).overlay((s.scope.kind, s.scope.key, s.values)
                                                      for s in await self.stored.load())

    @asynccontextmanager
    async def locked(self, user: str | None, roles: Sequence[str] | None = None) -> AsyncIterator[None]:
        """Hold the user's quota lock (see the module docstring) while per-user limits are set; record the
        user's role claims when the call carries them (``roles`` not None: the user acting for themself)."""
        if user and roles is not None:
            await self.roles.record(user, roles)
        if not user or not users_limited(await self.policies()):
            yield
            return
        async with self._locks.hold(f"quota:{user}"):
            yield

    async def roles_of(self, user: str, roles: Sequence[str] | None) -> Sequence[str]:
        """The call's own claims, else those the user last acted with (quota_policies.RoleStore)."""
        if roles is not None:
            return roles
        return (await self.roles.of([user])).get(user, ())

    async def cost(self, ref: TemplateRef) -> Usage:
        try:
            return cost_of(await self.template_of(ref))
        except NotFound:
            return Usage(running=1)

    async def usage(self, user: str) -> Usage:
        async with self.db.session() as session:
            rows = list((await session.execute(select(InstanceRow.namespace, InstanceRow.template, InstanceRow.slot)
                                               .where(InstanceRow.owner == user))).all())
        costs = {f"{ns}/{tpl}": await self.cost(TemplateRef(ns, tpl))
                 for ns, tpl in sorted({(ns, tpl) for ns, tpl, slot in rows if slot == SlotState.LIVE.value})}
        return usage_of(((slot, f"{ns}/{tpl}") for ns, tpl, slot in rows), costs)

    async def check(self, action: str, ref: TemplateRef, user: str, roles: Sequence[str] | None, adding: Usage,
                    running_here: int, policies: Policies | None = None) -> None:
        """Raise the refusal if ``adding`` for ``user`` on ``ref`` passes a limit; ``running_here`` is what runs on
        the template now (including earlier installs of the same batch). ``roles`` None: the user's recorded
        roles. ``policies`` as read under the caller's locks (read here if None)."""
        policies = policies or await self.policies()
        maximum = template_limit(policies, ref)
        if maximum is not None and adding.running and running_here + adding.running > maximum:
            raise refusal(action, user, [("template_running", running_here, maximum)], ref)
        if not users_limited(policies):
            return
        limits = limits_for(policies, user, await self.roles_of(user, roles))
        if not limits.any:
            return
        over = exceeded(user, limits, await self.usage(user), adding)
        if over:
            raise refusal(action, user, over)

    async def report(self, user: str, roles: Sequence[str] | None, usage: Usage) -> list[tuple[str, int, int | None]]:
        """(limit, usage, maximum or None for unlimited) of every per-user limit, for GetQuotaUsage."""
        if roles is not None:
            await self.roles.record(user, roles)
        limits = limits_for(await self.policies(), user, await self.roles_of(user, roles))
        return [(name, getattr(usage, name), getattr(limits, name)) for name in LIMITS]

    async def over(self, owners: Iterable[str], running: Mapping[TemplateRef, int]) -> list[tuple[str, str]]:
        """(subject, description) of each user and template above a limit: not a fault (only an admin's later
        lowering, or a role the user lost, gets there; nothing is paused or deleted for it), reported by
        CheckConsistency as information. Users are judged with the role claims they last acted with."""
        policies = await self.policies()
        out = []
        for ref, count in sorted(running.items()):
            maximum = template_limit(policies, ref)
            if maximum is not None and count > maximum:
                out.append((f"template:{ref.key}", f"{WORDS['template_running']} {count} of {maximum}"))
        if not users_limited(policies):
            return out
        users = sorted(set(owners))
        known = await self.roles.of(users)
        for user in users:
            limits, usage = limits_for(policies, user, known.get(user, ())), await self.usage(user)
            passed = [f"{WORDS[n]} {getattr(usage, n)} of {getattr(limits, n)}" for n in LIMITS
                      if getattr(limits, n) is not None and getattr(usage, n) > getattr(limits, n)]
            if passed:
                out.append((f"user:{user}", "; ".join(passed)))
        return out
