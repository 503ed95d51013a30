"""Replay protection for mutating RPCs (`request_id`, AIP-155).

The first call with a (method, caller, request_id) claims a row in state "pending", recording the replica
that runs it (:mod:`aigc_gateway.replicas`), runs, and stores its outcome: the response, or the refusal as
a ``google.rpc.Status``. A replay gets that stored outcome without running the handler again. Outcomes
worth retrying (UNAVAILABLE, ABORTED, INTERNAL…) are not stored, so a retry with the same request_id
really retries (it takes the claim, let go, over at once).

A retry that finds the claim pending asks whether its holder is alive: a live holder's call is still
running (however slowly), so the retry is ABORTED with ``retry_after``; a dead holder's claim is taken over
at once (within the replica lease). No call runs twice at once, and the claim's ``attempt`` fences a
holder that was wrongly thought dead: :meth:`finish` and :meth:`held` only succeed for the current one.
A claim this replica holds but no longer runs (its :meth:`finish` could not reach the database, e.g. during
a PostgreSQL restart) is taken over at once by a retry reaching this replica, as if it had been let go:
a live holder is otherwise waited for, and this one would be waited for as long as the replica lives.

A service commits what a call did together with that effect (:meth:`record_effect`, in the service's own
transaction), so a retry that takes the claim over after a crash gets the effect (:class:`Claim`) and
answers with what the first attempt did instead of running again against today's state. The running
call's claim is in :data:`current_claim` for the service to use.
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterable
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum
from typing import Any

import grpc
from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from .db import Database, rowcount
from .db.models import IdempotencyKeyRow
from .errors import Aborted, invalid
from .replicas import ReplicaRegistry, aware, utcnow

RETRYABLE = {
    grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ABORTED, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED, grpc.StatusCode.RESOURCE_EXHAUSTED,
}
# A claim recorded without a holder (before holders were recorded) is taken over after this long.
UNKNOWN_HOLDER_STALE_AFTER = timedelta(minutes=5)
# The holder of a claim whose call ended retryably after committing an effect: nobody; a retry takes it over.
RELEASED = "-"


@dataclass(frozen=True)
class Stored:
    """A finished first outcome: ``status_code`` 0 with a response, else a serialized google.rpc.Status."""

    status_code: int
    payload: bytes


@dataclass(frozen=True)
class Claim:
    """The running call's claim: ``effect`` is what an earlier attempt committed before it died, if anything."""

    key: str
    holder: str
    attempt: int
    effect: dict[str, Any] | None = None


current_claim: ContextVar[Claim | None] = ContextVar("current_claim", default=None)


class Verdict(str, Enum):
    RUN = "run"  # no row: claim it (again)
    REPLAY = "replay"  # finished: answer with the stored outcome
    REUSED = "reused"  # the same id with a different request
    WAIT = "wait"  # running in a live replica
    TAKE_OVER = "take_over"  # its replica is dead (or let it go): run it here


@dataclass(frozen=True)
class Seen:
    """The parts of a claim row the verdict depends on."""

    state: str
    request_hash: str
    holder: str
    created_at: datetime


def judge(row: Seen | None, digest: str, holder_alive: bool, now: datetime) -> Verdict:
    """What a call with this request digest does about the claim row it found (pure)."""
    if row is None:
        return Verdict.RUN
    if row.request_hash != digest:
        return Verdict.REUSED
    if row.state == "done":
        return Verdict.REPLAY
    if row.holder == RELEASED:
        return Verdict.TAKE_OVER
    if not row.holder:
        return Verdict.TAKE_OVER if now - aware(row.created_at) >= UNKNOWN_HOLDER_STALE_AFTER else Verdict.WAIT
    return Verdict.WAIT if holder_alive else Verdict.TAKE_OVER


def _key(method: str, subject: str, request_id: str) -> str:
    return hashlib.sha256(f"{method}\0{subject}\0{request_id}".encode()).hexdigest()


def taken_over() -> Aborted:
    """A call whose claim a retry took over (its replica was thought dead) stops before it changes anything:
    the retry answers."""
    return Aborted("a retry of this request took it over (this replica was thought dead); it answers",
                   reason="REQUEST_TAKEN_OVER", retry_after=1.0)


def _in_progress(retry_after: float) -> Aborted:
    return Aborted("a request with this request_id is still in progress", reason="REQUEST_IN_PROGRESS",
                   retry_after=retry_after)


class IdempotencyStore:
    def __init__(self, db: Database, replicas: ReplicaRegistry | None = None, *, retry_after: float = 1.0,
                 retention: timedelta = timedelta(days=1)):
        self.db = db
        self.replicas = replicas or ReplicaRegistry(db, lease_seconds=10.0)
        self.retry_after = retry_after
        self.retention = retention
        self._running: set[tuple[str, int]] = set()  # (key, attempt) of the claims this replica runs now
        self.replicas.housekeeping.append(self.prune)

    async def claim(self, method: str, subject: str, request_id: str, request: bytes) -> tuple[Claim, Stored | None]:
        """Claim the key. Returns (claim, None) to run the call, or (claim, Stored) to replay it."""
        if len(request_id) > 128:
            raise invalid("request_id", "must be at most 128 characters")
        key = _key(method, subject, request_id)
        digest = hashlib.sha256(request).hexdigest()
        me = await self.replicas.ensure_started()
        for _ in range(3):
            now = utcnow()
            try:
                async with self.db.session() as session:
                    session.add(IdempotencyKeyRow(key=key, method=method, request_hash=digest, state="pending",
                                                  status_code=0, payload=None, created_at=now, holder=me,
                                                  attempt=0))
                self._running.add((key, 0))
                return Claim(key, me, 0), None
            except IntegrityError:
                pass
            async with self.db.session() as session:
                row = (await session.execute(select(IdempotencyKeyRow)
                                             .where(IdempotencyKeyRow.key == key))).scalar_one_or_none()
            seen = Seen(row.state, row.request_hash, row.holder, row.created_at) if row is not None else None
            orphaned = bool(row is not None and row.state == "pending" and row.holder == me
                            and (key, row.attempt) not in self._running)
            alive = not orphaned and bool(seen and seen.holder and seen.holder != RELEASED
                                          and await self.replicas.alive(seen.holder))
            verdict = judge(seen, digest, alive, now)
            if verdict is Verdict.RUN:
                continue  # finished retryably and removed between our insert and this read
            assert row is not None
            if verdict is Verdict.REUSED:
                raise invalid("request_id", "was already used for a different request", reason="REQUEST_ID_REUSED")
            if verdict is Verdict.REPLAY:
                return Claim(key, row.holder, row.attempt), Stored(row.status_code, row.payload or b"")
            if verdict is Verdict.WAIT:
                raise _in_progress(self.retry_after)
            async with self.db.session() as session:
                taken = await session.execute(
                    update(IdempotencyKeyRow)
                    .where(IdempotencyKeyRow.key == key, IdempotencyKeyRow.state == "pending",
                           IdempotencyKeyRow.holder == row.holder, IdempotencyKeyRow.attempt == row.attempt)
                    .values(holder=me, attempt=row.attempt + 1, created_at=now))
            if rowcount(taken) != 1:
                raise _in_progress(self.retry_after)  # another retry took it over first
            self._running.add((key, row.attempt + 1))
            return Claim(key, me, row.attempt + 1, row.effect), None
        raise _in_progress(self.retry_after)

    async def finish(self, claim: Claim, code: grpc.StatusCode, payload: bytes) -> None:
        """Store the outcome, or let the claim go when the outcome is worth retrying. A claim taken over
        meanwhile is left to its new holder.

        A claim let go stays pending with no holder, so the retry takes it over at once: the row must outlive
        the call because work the call started may still commit its effect on it (an intent resolved later by
        another replica, a shielded install batch that outlives its cancelled caller), and the retry then
        answers with that effect instead of running against the changed state."""
        mine = (IdempotencyKeyRow.key == claim.key, IdempotencyKeyRow.holder == claim.holder,
                IdempotencyKeyRow.attempt == claim.attempt, IdempotencyKeyRow.state == "pending")
        try:
            async with self.db.session() as session:
                if code in RETRYABLE:
                    await session.execute(update(IdempotencyKeyRow).where(*mine).values(holder=RELEASED))
                else:
                    await session.execute(update(IdempotencyKeyRow).where(*mine)
                                          .values(state="done", status_code=code.value[0], payload=payload))
        finally:
            # Stored, let go, or not written at all: either way this replica runs the claim no more.
            self._running.discard((claim.key, claim.attempt))

    # -- what services do with the running call's claim --------------------------------------------------

    @staticmethod
    async def record_effect(session: AsyncSession, claim: Claim, effect: dict[str, Any]) -> bool:
        """In the caller's transaction (the one committing the effect): attach the effect to the claim.
        False when the claim is no longer this call's (taken over, or gone)."""
        written = await session.execute(
            update(IdempotencyKeyRow)
            .where(IdempotencyKeyRow.key == claim.key, IdempotencyKeyRow.state == "pending")
            .values(effect=effect))
        return bool(rowcount(written))

    @staticmethod
    async def commit_effect(session: AsyncSession, claim: Claim | None, effect: dict[str, Any]) -> None:
        """:meth:`record_effect` for a call that must stop once its claim is not its own: a call without a claim
        (no request_id) records nothing; a claim taken over raises :func:`taken_over`, rolling back the caller's
        transaction, the one committing the effect."""
        if claim is not None and not await IdempotencyStore.record_effect(session, claim, effect):
            raise taken_over()

    @staticmethod
    async def commit_effect_now(db: Database, claim: Claim | None, effect: dict[str, Any]) -> None:
        """:meth:`commit_effect` in a transaction of its own, before a write outside PostgreSQL (Kubernetes,
        Logto) that the effect describes."""
        if claim is None:
            return
        async with db.session() as session:
            await IdempotencyStore.commit_effect(session, claim, effect)

    @staticmethod
    async def record_effects(session: AsyncSession, effects: dict[str, dict[str, Any]]) -> None:
        """Attach effects to claims by key (recovering an interrupted write: its holder is gone)."""
        for key, effect in effects.items():
            await session.execute(update(IdempotencyKeyRow)
                                  .where(IdempotencyKeyRow.key == key, IdempotencyKeyRow.state == "pending")
                                  .values(effect=effect))

    async def held(self, claims: Iterable[Claim]) -> dict[str, tuple[bool, dict[str, Any] | None]]:
        """For each claim: whether this call still holds it, and the effect committed for it so far."""
        wanted = {c.key: c for c in claims}
        if not wanted:
            return {}
        async with self.db.session() as session:
            rows = (await session.execute(select(IdempotencyKeyRow.key, IdempotencyKeyRow.holder,
                                                 IdempotencyKeyRow.attempt, IdempotencyKeyRow.effect)
                                          .where(IdempotencyKeyRow.key.in_(list(wanted))))).all()
        found = {key: (holder == wanted[key].holder and attempt == wanted[key].attempt, effect)
                 for key, holder, attempt, effect in rows}
        return {key: found.get(key, (False, None)) for key in wanted}

    async def prune(self) -> int:
        cutoff = utcnow() - self.retention
        async with self.db.session() as session:
            result = await session.execute(delete(IdempotencyKeyRow).where(IdempotencyKeyRow.created_at < cutoff))
            return rowcount(result)

    async def close(self) -> None:
        await self.replicas.close()
