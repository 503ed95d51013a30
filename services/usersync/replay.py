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
retry uses only an effect of its own method. The domain modules build and read the effects and commit them
with the core's ``IdempotencyStore.commit_effect`` (in their transaction) or ``commit_effect_now``.
"""
from __future__ import annotations

from typing import Any

from aigc_gateway.idempotency import Claim


def prior(claim: Claim | None, op: str) -> dict[str, Any] | None:
    """What an earlier attempt of this call committed, if it was this method's."""
    if claim is None or not claim.effect or claim.effect.get("op") != op:
        return None
    return claim.effect

