"""The idle culler (issue 15): warn the owner of an instance nobody uses, then pause it.

Runs on every replica, without a leader. A pass reads the running instances (and the announcements still
recorded) outside any lock and asks :func:`.idle_policy.decide`; every change (announce, withdraw, pause)
is then decided again under the template's allocator lock from rows read there, so two replicas, or a
culler and a user's resume, keep-alive or access, never both win: the second finds the first's outcome
(a paused slot, a newer activity time) and does nothing. The pause is an ordinary allocator step
(:meth:`.lifecycle.Lifecycle.step`, disk and id kept), so its intent, fault points and crash recovery are
the ones every pause has; it is audited with the culler as actor and the reason "idle".

Busy probes (HTTP GET on the pod's IP, the way a proxy reaches it) run only for an instance that is due
for a warning or the pause, outside the lock; a busy answer is recorded as activity (``kept_at``). A probe
that fails (no answer, not 200, not JSON) is counted and is not activity: an engine that cannot answer
its own probe is not working for anyone, and the owner is warned before anything happens.
"""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx
from sqlalchemy import and_, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from aigc_gateway import idle
from aigc_gateway.audit import AuditLog
from aigc_gateway.background import every
from aigc_gateway.config import IdleConfig
from aigc_gateway.db import Database, rowcount
from aigc_gateway.db.models import InstanceRow, notify_instance_change
from aigc_gateway.faults import register
from aigc_gateway.names import InstanceRef, TemplateRef
from aigc_gateway.okg import SlotState

from . import allocator, faults
from .allocator import Op, Plan, Spec
from .cache import ClusterCache
from .idle_models import IdleExemptionRow, IdleStateRow
from .idle_policy import Action, Decision, Facts, decide, timeout_of
from .lifecycle import Lifecycle
from .metrics import IDLE_PAUSES, IDLE_PROBE_FAILURES, IDLE_WARNINGS
from .slots import aware, slots_of

log = logging.getLogger(__name__)

ACTOR = "service:idle-culler"
# Between a pass's decision to pause (outside the lock) and the lock: tests hold a culler here while a user
# resumes or keeps the instance alive, and show that the decision re-read under the lock does not pause it.
register(("idle.before_pause",))

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    return datetime.now(UTC)


def probe_port(gss: dict[str, Any], probe: idle.Probe) -> int | None:
    if probe.port is not None:
        return probe.port
    for conf in ((gss.get("spec") or {}).get("network") or {}).get("networkConf") or []:
        if isinstance(conf, dict) and conf.get("name") == "Port" and str(conf.get("value") or "").isdigit():
            return int(conf["value"])
    return None


class Culler:
    def __init__(self, db: Database, lifecycle: Lifecycle, cache: ClusterCache, cfg: IdleConfig, prefix: str,
                 audit: AuditLog | None = None, clock: Clock = utcnow):
        self.db = db
        self.lifecycle = lifecycle
        self.cache = cache
        self.cfg = cfg
        self.prefix = prefix
        self.audit = audit
        self.clock = clock
        self._http = httpx.AsyncClient(timeout=cfg.probe_timeout_seconds, trust_env=False)

    async def run(self) -> None:
        await every(self.cfg.interval_seconds, self.pass_once, "idle culler pass", logger=log)

    async def close(self) -> None:
        await self._http.aclose()

    # -- reading the facts -------------------------------------------------------------------------------

    async def _template(self, ref: TemplateRef) -> dict[str, Any] | None:
        gss = self.cache.template(ref)
        if gss is None:
            try:
                gss = await self.lifecycle.cluster.template(ref)
            except Exception:  # noqa: BLE001 - a template gone or unreadable: no timeout known, nothing paused
                gss = None
        return gss

    def _facts(self, row: InstanceRow, state: IdleStateRow | None, exempt: bool, gss: dict[str, Any] | None,
               probed_idle: bool = False) -> Facts:
        probe = idle.read(((gss or {}).get("metadata") or {}).get("annotations"), self.prefix)[0].probe
        return Facts(
            slot=row.slot, slot_since=aware(row.state_changed_at),
            last_access=aware(row.last_access_at) if row.last_access_at else None,
            kept_at=aware(state.kept_at) if state and state.kept_at else None,
            scheduled_pause=aware(state.scheduled_pause_at) if state and state.scheduled_pause_at else None,
            warned_activity=aware(state.warned_activity_at) if state and state.warned_activity_at else None,
            timeout=timeout_of(gss, self.prefix, self.cfg) if gss is not None else None, exempt=exempt,
            has_probe=probe is not None, probed_idle=probed_idle)

    async def facts(self, ref: InstanceRef, probed_idle: bool = False) -> tuple[Facts, InstanceRow] | None:
        """One instance's facts read now (under the lock); None when the id has no row."""
        async with self.db.session() as session:
            row = await session.get(InstanceRow, (ref.namespace, ref.template, ref.id))
            state = await session.get(IdleStateRow, (ref.namespace, ref.template, ref.id))
            exempt = row is not None and row.owner is not None and \
                await session.get(IdleExemptionRow, row.owner) is not None
        if row is None:
            return None
        return self._facts(row, state, exempt, await self._template(ref.template_ref), probed_idle), row

    async def snapshot(self) -> list[tuple[InstanceRef, Facts]]:
        """Every running instance and every one with an announcement still recorded (to withdraw it), with its
        facts, in three reads (outside any lock: each change is decided again under the lock)."""
        key = (IdleStateRow.namespace == InstanceRow.namespace, IdleStateRow.template == InstanceRow.template,
               IdleStateRow.id == InstanceRow.id)
        async with self.db.session() as session:
            found = (await session.execute(select(InstanceRow, IdleStateRow).outerjoin(IdleStateRow, and_(*key))
                                           .where(or_(InstanceRow.slot == SlotState.LIVE.value,
                                                      IdleStateRow.scheduled_pause_at.is_not(None))))).all()
            exempt = set((await session.execute(select(IdleExemptionRow.user))).scalars())
        templates = {TemplateRef(r.namespace, r.template) for r, _ in found}
        gss = {ref: await self._template(ref) for ref in sorted(templates)}
        out = [(InstanceRef(r.namespace, r.template, r.id),
                self._facts(r, state, r.owner in exempt, gss[TemplateRef(r.namespace, r.template)]))
               for r, state in found]
        return sorted(out, key=lambda pair: pair[0])

    # -- a pass ------------------------------------------------------------------------------------------

    async def pass_once(self) -> dict[str, int]:
        """Look at every candidate once; returns how many of each action were taken (for tests and logs)."""
        done: dict[str, int] = {}
        for ref, facts in await self.snapshot():
            try:
                action = await self.consider(ref, facts)
            except Exception as exc:  # noqa: BLE001 - one instance's trouble must not stop the others
                log.warning("idle culler: %s: %s", ref.name, exc)
                continue
            if action is not Action.NONE:
                done[action.value] = done.get(action.value, 0) + 1
        return done

    async def consider(self, ref: InstanceRef, facts: Facts) -> Action:
        decision = decide(facts, self.clock(), self.cfg.warning_seconds)
        probed = False
        if decision.action is Action.PROBE:
            if await self.probe(ref):
                await self.keep(ref, source="probe")
                return Action.NONE
            probed = True
            decision = decide(dataclasses.replace(facts, probed_idle=True), self.clock(), self.cfg.warning_seconds)
        if decision.action is Action.NONE:
            return Action.NONE
        if decision.action is Action.PAUSE:
            await faults.reach("idle.before_pause")
            return Action.PAUSE if await self.pause(ref, probed) else Action.NONE
        return await self.announce(ref, probed)

    async def _decide_locked(self, ref: InstanceRef, probed: bool) -> tuple[Decision, Facts, InstanceRow] | None:
        found = await self.facts(ref, probed_idle=probed)
        if found is None:
            return None
        facts, row = found
        return decide(facts, self.clock(), self.cfg.warning_seconds), facts, row

    async def announce(self, ref: InstanceRef, probed: bool) -> Action:
        """Announce the pause or withdraw an announcement, decided again under the template lock."""
        async with self.lifecycle.locked(ref.template_ref):
            got = await self._decide_locked(ref, probed)
            if got is None or got[0].action not in (Action.WARN, Action.CANCEL):
                return Action.NONE
            decision, facts, row = got
            async with self.db.session() as session:
                state = await _state(session, ref)
                if decision.action is Action.WARN:
                    state.scheduled_pause_at, state.warned_activity_at = decision.pause_at, facts.last_activity
                else:
                    state.scheduled_pause_at = state.warned_activity_at = None
                await notify_instance_change(session, ref.namespace, ref.template, ref.id)
        if decision.action is Action.WARN:
            IDLE_WARNINGS.inc()
            log.info("idle: %s of %s will be paused at %s unless used", ref.name, row.owner,
                     decision.pause_at.isoformat() if decision.pause_at else "?")
        return decision.action

    async def pause(self, ref: InstanceRef, probed: bool) -> bool:
        """The pause as an allocator step whose plan is decided under the lock; True when this call paused it."""
        seen: list[tuple[Decision, Facts, InstanceRow]] = []

        async def before() -> bool:  # after the step resolved leftover intents, under the lock
            got = await self._decide_locked(ref, probed)
            if got is None or got[0].action is not Action.PAUSE:
                # Resumed, used, kept alive, paused by the other replica, exempt...: nothing to do.
                log.info("idle: %s not paused: decided again under the lock: %s", ref.name,
                         got[0].action.value if got else "gone")
                return True
            seen.append(got)
            return False

        def plan(spec: Spec, rows: dict[int, InstanceRow]) -> Plan:
            row = rows.get(ref.id)
            if row is None or row.slot != SlotState.LIVE.value or row.owner != seen[-1][2].owner:
                return Plan(Op.PAUSE, ref.id, None, spec, None)  # changed since before(): plan nothing
            return allocator.plan_pause(ref.template_ref, spec, slots_of(rows), ref.id)

        done_plan, _ = await self.lifecycle.step(ref.template_ref, Op.PAUSE, plan, before)
        if done_plan is None or not done_plan.transitions:
            return False
        decision, facts, row = seen[-1]
        async with self.db.session() as session:
            state = await _state(session, ref)
            state.scheduled_pause_at = state.warned_activity_at = None
        IDLE_PAUSES.inc()
        idle_for = (self.clock() - facts.last_activity).total_seconds()
        log.info("idle: paused %s of %s after %.0f s without activity", ref.name, row.owner, idle_for)
        if self.audit is not None:
            await self.audit.record("InstanceService.PauseInstance", ref.name, actor=ACTOR, actor_kind="service",
                                    details={"reason": "idle", "owner": row.owner, "idle_seconds": round(idle_for),
                                             "last_activity": facts.last_activity.isoformat(),
                                             "scheduled_pause_time": decision.pause_at.isoformat()
                                             if decision.pause_at else ""})
        return True

    # -- activity ----------------------------------------------------------------------------------------

    async def keep(self, ref: InstanceRef, source: str = "keep-alive") -> None:
        """Record activity now (KeepInstanceAlive, a busy probe, a restart). A pause is decided under the template
        lock, from the activity read there, and only once announced from that same activity: with no pause
        announced, the activity is written without the lock (:meth:`_keep_unannounced`); an announcement is
        withdrawn under the lock: a pause decided under the lock before it happened; none after it."""
        if await self._keep_unannounced(ref):
            log.debug("idle: %s active (%s)", ref.name, source)
            return
        async with self.lifecycle.locked(ref.template_ref), self.db.session() as session:
            state = await _state(session, ref)
            state.kept_at = self.clock()
            withdrawn = state.scheduled_pause_at is not None
            state.scheduled_pause_at = state.warned_activity_at = None
            await notify_instance_change(session, ref.namespace, ref.template, ref.id)
        log.debug("idle: %s active (%s)%s", ref.name, source, "; announced pause withdrawn" if withdrawn else "")

    async def _keep_unannounced(self, ref: InstanceRef) -> bool:
        """The activity written without the template lock, in one statement that finds no pause announced; False
        when one is (or the row is being made by someone else): then :meth:`keep` takes the lock.

        Why no lock is needed then: a pause needs an announcement made from the latest activity
        (idle_policy.Facts.announced). One a culler makes from a read before this write carries the older
        activity, so it is withdrawn at its next look, never acted on; one made after it counts this activity.
        A restart waited here for every step queued on the template (bench/kill_storm.py: answered 8-15 s after
        its pod was deleted, p99 22 s), though nothing had been announced."""
        key = (IdleStateRow.namespace == ref.namespace, IdleStateRow.template == ref.template,
               IdleStateRow.id == ref.id)
        try:
            async with self.db.session() as session:
                kept = await session.execute(update(IdleStateRow).where(*key, IdleStateRow.scheduled_pause_at.is_(None))
                                             .values(kept_at=self.clock()))
                if not rowcount(kept):
                    if await session.get(IdleStateRow, (ref.namespace, ref.template, ref.id)) is not None:
                        return False  # a pause is announced
                    session.add(IdleStateRow(namespace=ref.namespace, template=ref.template, id=ref.id,
                                             kept_at=self.clock()))
                    await session.flush()
                await notify_instance_change(session, ref.namespace, ref.template, ref.id)
        except IntegrityError:
            return False  # a culler made the row meanwhile: decide under the lock
        return True

    async def probe(self, ref: InstanceRef) -> bool:
        """Whether the engine says it is busy (False also when the probe fails; counted)."""
        gss = self.cache.template(ref.template_ref) or {}
        spec = idle.read((gss.get("metadata") or {}).get("annotations"), self.prefix)[0].probe
        pod = self.cache.observed(ref).pod or {}
        ip = (pod.get("status") or {}).get("podIP")
        port = probe_port(gss, spec) if spec else None
        if spec is None or not ip or port is None:
            IDLE_PROBE_FAILURES.labels("no_address").inc()
            return False
        url = f"http://{ip}:{port}{spec.path}"
        try:
            answer = await self._http.get(url)
        except httpx.HTTPError as exc:
            IDLE_PROBE_FAILURES.labels("unreachable").inc()
            log.info("idle probe of %s (%s): %s", ref.name, url, exc)
            return False
        if answer.status_code != 200:
            IDLE_PROBE_FAILURES.labels("status").inc()
            log.info("idle probe of %s (%s): HTTP %d", ref.name, url, answer.status_code)
            return False
        try:
            document = answer.json()
        except ValueError:
            IDLE_PROBE_FAILURES.labels("not_json").inc()
            return False
        return idle.busy(document, spec.busy)


async def _state(session: AsyncSession, ref: InstanceRef) -> IdleStateRow:
    state = await session.get(IdleStateRow, (ref.namespace, ref.template, ref.id))
    if state is None:
        state = IdleStateRow(namespace=ref.namespace, template=ref.template, id=ref.id)
        session.add(state)
    return state
