"""What a usersync call commits for a retry of the same request after a crash (issue 20, AIP-155).

A call whose replica died after its effect and before its stored outcome is taken over by the retry, which
would otherwise run against the state the first attempt changed and answer differently: SyncUser "nothing
changed", CleanupTemplate fewer users (their removals delivered), ImportFromLogto "unchanged" for what it
imported, Reconcile no drift for what it repaired, ResolveDisputedInstance "not disputed". So each call
commits its answer (or the part of it done so far) on its replay claim (``Claim.effect``):

- in the transaction that commits the effect, where the effect is in PostgreSQL (CleanupTemplate's outbox
  rows, ImportFromLogto's rows per template, ResolveDisputedInstance's decision);
- in a transaction of its own just before the Logto write, where the effect is in Logto (SyncUser,
  Reconcile per user): the retry then writes again whatever is still missing (the writes converge on the
  ownership rows) and answers with what the first attempt found.

A dry run writes nothing, so running it again is right. The effect is ``{"op": <method>, ...}``; the
retry uses only an effect of its own method. The domain modules build and read the effects; this module
only commits them.
"""
from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from aigc_gateway.db import Database
from aigc_gateway.idempotency import Claim, IdempotencyStore, taken_over


def prior(claim: Claim | None, op: str) -> dict[str, Any] | None:
    """What an earlier attempt of this call committed, if it was this method's."""
    if claim is None or not claim.effect or claim.effect.get("op") != op:
        return None
    return claim.effect


async def record_in(session: AsyncSession, claim: Claim | None, effect: dict[str, Any]) -> None:
    """In the transaction committing the effect; a claim taken over meanwhile rolls it back."""
    if claim is not None and not await IdempotencyStore.record_effect(session, claim, effect):
        raise taken_over()


async def record(db: Database, claim: Claim | None, effect: dict[str, Any]) -> None:
    """Committed now, before the write to Logto it describes."""
    if claim is None:
        return
    async with db.session() as session:
        await record_in(session, claim, effect)
