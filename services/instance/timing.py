"""Where an allocator step's time goes: one INFO line per step with its phases (lock wait, controller settle,
resolve and plan, intent, GameServerSet write, commit, conflict backoff), so that a slow operation can be
explained from the logs alone (bench/kill_storm.py reads them and prints per-phase p50/p99).

A step opens a :class:`StepTimes` with :func:`step`; the code it runs adds to the current one with
:func:`phase` (a no-op outside a step, e.g. the reconciler's pass).
"""
from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

# The phases in the order a step goes through them (the log line and the bench print them so).
PHASES = ("lock", "settle", "plan", "intent", "write", "commit", "backoff", "pod")


@dataclass
class StepTimes:
    op: str
    template: str
    calls: int = 1  # the calls the step serves (an install batch serves several)
    started: float = field(default_factory=time.perf_counter)
    phases: dict[str, float] = field(default_factory=dict)
    attempts: int = 0
    writes: int = 0

    def add(self, name: str, seconds: float) -> None:
        self.phases[name] = self.phases.get(name, 0.0) + seconds

    def report(self, outcome: str) -> None:
        if not self.calls:
            return  # an install batch that found its calls taken by an earlier one
        total = time.perf_counter() - self.started
        parts = " ".join(f"{p} {self.phases[p]:.3f}" for p in PHASES if p in self.phases)
        log.info("%s step of %s (%d calls) %s in %.3f s: %s", self.op, self.template, self.calls, outcome, total,
                 parts, extra={"step": {"op": self.op, "template": self.template, "calls": self.calls,
                                        "outcome": outcome, "total": round(total, 4), "attempts": self.attempts,
                                        "writes": self.writes,
                                        **{p: round(v, 4) for p, v in self.phases.items()}}})


_current: ContextVar[StepTimes | None] = ContextVar("allocator_step_times", default=None)


@contextmanager
def step(op: str, template: str, calls: int = 1) -> Iterator[StepTimes]:
    """Time one step; its line is logged when the block ends (outcome: OK, or the error's code)."""
    times = StepTimes(op, template, calls)
    token = _current.set(times)
    outcome = "OK"
    try:
        yield times
    except BaseException as exc:
        code = getattr(exc, "code", None)
        outcome = getattr(code, "name", type(exc).__name__)
        raise
    finally:
        _current.reset(token)
        times.report(outcome)


@contextmanager
def phase(name: str) -> Iterator[None]:
    """Add the block's time to the current step's phase ``name``."""
    times = _current.get()
    if times is None:
        yield
        return
    started = time.perf_counter()
    try:
        yield
    finally:
        times.add(name, time.perf_counter() - started)


def count(attempt: bool = False, write: bool = False) -> None:
    times = _current.get()
    if times is not None:
        times.attempts += attempt
        times.writes += write


def add(name: str, seconds: float) -> None:
    """Add ``seconds`` to the current step's phase ``name`` (for a wait measured by its caller)."""
    times = _current.get()
    if times is not None:
        times.add(name, seconds)
