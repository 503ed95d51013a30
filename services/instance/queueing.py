"""A template's write queues (ups.py: installs and resumes; downs.py: pauses and uninstalls): the caller's entry is
queued, whoever takes the lock next writes every queued entry in one GameServerSet write, and each caller awaits its
own answer.

Every caller starts a run of its own, which waits its turn for the template lock; a caller whose entry an earlier
run's batch took is answered by that batch and returns at once. It used to wait for its own run too, which then
took the lock only to find nothing left: behind every step queued meanwhile on the template, the other replica's
included (bench/kill_storm.py: such callers answered 1.2 s (p50) to 4-8 s (p90) after the batch that served them).

What both queues do alike lives here too: the queue per template (its length is the gauge
`aigc_instance_allocator_queued{template,kind}`, set as entries join and leave), and the batch's look at its calls'
replay claims after the step resolved leftover intents (:func:`unclaimed`), the batch's planning and its one write
(:func:`write`), and each caller's answer (:func:`answer`).
"""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from aigc_gateway.background import Tasks
from aigc_gateway.db.models import InstanceRow
from aigc_gateway.errors import Aborted, GatewayError
from aigc_gateway.idempotency import Claim
from aigc_gateway.names import TemplateRef

from . import combine
from .allocator import Op, Plan, Spec
from .effects import taken_over
from .metrics import OPERATIONS, QUEUED
from .slots import slots_of

if TYPE_CHECKING:
    from .lifecycle import Lifecycle

Effect = dict[str, Any]


class Queued(Protocol):
    @property
    def op(self) -> Op: ...

    @property
    def future(self) -> asyncio.Future[Effect]: ...

    @property
    def claim(self) -> Claim | None: ...


Q = TypeVar("Q", bound=Queued)
ClaimsState = Callable[[list[Claim]], Awaitable[dict[str, tuple[bool, Effect | None]]]]
Answer = Callable[[Q, "Effect | BaseException"], None]


def new_answer() -> asyncio.Future[Effect]:
    """A caller's answer, retrieved even if nobody awaits it (its caller gave up)."""
    future: asyncio.Future[Effect] = asyncio.get_running_loop().create_future()
    future.add_done_callback(lambda f: f.cancelled() or f.exception())
    return future


class Queues(Generic[Q]):
    """Per template (its key), the calls of one kind waiting for the template's next write, oldest first."""

    def __init__(self, kind: str):
        self.kind = kind
        self._queued: dict[str, list[Q]] = {}
        # Runs whose caller was answered by another batch (or gave up) go on here, referenced; cancelled at
        # close, as a crash would stop them (their intents are resolved by whoever takes the lock next).
        self.runs = Tasks()

    def entries(self, key: str) -> list[Q]:
        return self._queued.get(key) or []

    async def close(self) -> None:
        """Cancel the runs still going, as a crash would stop them."""
        await self.runs.cancel()

    def take(self, key: str, batch: Sequence[Q]) -> None:
        """Take ``batch`` (entries of the queue) out: the run that took them answers them."""
        self._set(key, [q for q in self.entries(key) if not any(q is b for b in batch)])

    def _set(self, key: str, queue: list[Q]) -> None:
        if queue:
            self._queued[key] = queue
        else:
            self._queued.pop(key, None)
        QUEUED.labels(key, self.kind).set(len(queue))

    async def join(self, key: str, queued: Q, run: Callable[[], Awaitable[None]]) -> Effect:
        """Queue ``queued``, start a run (not cancelled with its caller: it may be writing other callers' batch)
        and return the answer as soon as some batch has given it. An entry no batch took is taken out again when
        its caller stops waiting: it must not run after we answered."""
        self._set(key, [*self.entries(key), queued])
        ours = self.runs.spawn(_awaited(run))
        ours.add_done_callback(lambda t: t.cancelled() or t.exception())  # retrieved, whoever awaits it
        try:
            await asyncio.wait((ours, queued.future), return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            if any(q is queued for q in self.entries(key)):
                self.take(key, [queued])
            raise
        if not queued.future.done():
            ours.result()  # the run ended without answering us: its own failure
        return await queued.future


async def unclaimed(claims_state: ClaimsState, batch: Sequence[Q], answer: Answer[Q]) -> list[Q]:
    """The batch's calls still to plan, looked at after the step resolved leftover intents: a retry whose first
    attempt's effect was applied (by that resolve, or earlier) is answered with it; a call whose claim a retry took
    over is answered so and stops here, before it plans; a call answered already (a refusal on an earlier attempt
    of the batch) is left out."""
    state = await claims_state([q.claim for q in batch if q.claim is not None])
    out: list[Q] = []
    for q in batch:
        held, effect = state.get(q.claim.key, (True, None)) if q.claim else (True, None)
        if effect is not None:
            answer(q, effect)
        elif not held:
            answer(q, taken_over())
        elif not q.future.done():
            out.append(q)
    return out


async def write(lifecycle: Lifecycle, ref: TemplateRef, batch: list[Q],
                step_of: Callable[[Q, dict[int, InstanceRow]], combine.Step], idle: Op,
                admit: Callable[[list[Q]], Awaitable[list[Q]]] | None = None) -> None:
    """The batch's one step under the template lock (held by the caller): after leftover intents are resolved, the
    calls still to plan (:func:`unclaimed`, then ``admit``'s say) are planned one after another (combine.py) and go
    in one GameServerSet write. Each caller is answered with its own effect or refusal, or, when the whole step
    failed, with that error. ``idle``: the op of the step that writes nothing (every call refused or answered)."""
    planned: list[Q] = []
    results: list[Plan | GatewayError] = []

    async def before() -> bool:
        calls = await unclaimed(lifecycle._claims_state, batch, answer)
        planned[:] = await admit(calls) if admit is not None else calls
        return not planned

    def decide(spec: Spec, rows: dict[int, InstanceRow]) -> Plan:
        plan, results[:] = combine.plan_batch(ref, spec, slots_of(rows), [step_of(q, rows) for q in planned])
        return plan or Plan(idle, -1, None, spec, None)

    try:
        _, done = await lifecycle._attempts(ref, decide, before)
    except Exception as exc:  # the whole batch failed; each caller gets the error
        for q in batch:
            answer(q, exc)
        return
    for q, result in zip(planned, results, strict=True):
        if isinstance(result, GatewayError):
            answer(q, result)
        elif result.id in done:
            answer(q, done[result.id])
        else:  # not reachable: every planned call has an effect
            answer(q, Aborted(f"the {q.op.value} was not planned; retry", reason="ALLOCATOR_CONTENDED",
                              retry_after=0.5))


def answer(q: Queued, outcome: Effect | BaseException) -> None:
    """Answer the caller (once; counted in aigc_instance_operations_total)."""
    if q.future.done():
        return
    if isinstance(outcome, BaseException):
        OPERATIONS.labels(q.op.value, outcome.code.name if isinstance(outcome, GatewayError) else "INTERNAL").inc()
        q.future.set_exception(outcome)
    else:
        OPERATIONS.labels(q.op.value, "OK").inc()
        q.future.set_result(outcome)


async def _awaited(run: Callable[[], Awaitable[None]]) -> None:
    await run()
