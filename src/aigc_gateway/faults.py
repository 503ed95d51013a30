"""Fault injection for crash tests: named points where a process exits, or stops and waits to be killed.

Inert unless a variable is set:

- ``AIGC_GATEWAY_FAULT=<point>``: the process exits at the point (``os._exit``: no cleanup, no flushing,
  no transaction commit, exactly what a killed process leaves behind);
- ``AIGC_GATEWAY_HOLD=<point>`` with ``AIGC_GATEWAY_HOLD_DIR=<dir>``: the call reaching the point writes
  ``<dir>/<point>.reached`` and waits, its process still alive (heartbeats go on), until ``<dir>/<point>.release``
  exists. A test then kills the process with SIGKILL at exactly that point, or shows what a live holder does.

Points are named ``<operation>.<step>``; services add theirs with :func:`register` so a typo in the variable
is reported at start. The core's own points are the two ends of a claimed call (:mod:`aigc_gateway.calls`).
"""
from __future__ import annotations

import asyncio
import logging
import os
import sys
from pathlib import Path

ENV = "AIGC_GATEWAY_FAULT"
HOLD_ENV = "AIGC_GATEWAY_HOLD"
HOLD_DIR_ENV = "AIGC_GATEWAY_HOLD_DIR"
EXIT_CODE = 86

# Between the replay claim and the stored outcome of a mutating call.
CORE_POINTS = ("call.after_claim", "call.before_finish")
POINTS: list[str] = list(CORE_POINTS)

log = logging.getLogger(__name__)


def register(points: tuple[str, ...]) -> None:
    POINTS.extend(p for p in points if p not in POINTS)


def armed() -> str:
    value = os.environ.get(ENV, "") or os.environ.get(HOLD_ENV, "")
    if value and value not in POINTS:
        log.error("%s/%s=%s names no fault point; known: %s", ENV, HOLD_ENV, value, ", ".join(POINTS))
    return value


def point(name: str) -> None:
    """Exit the process now if the fault switch names this point."""
    if os.environ.get(ENV) == name:
        sys.stderr.write(f"fault injected at {name}: exiting\n")
        sys.stderr.flush()
        os._exit(EXIT_CODE)


async def reach(name: str) -> None:
    """:func:`point`, and hold here (the process alive) while the hold switch names this point."""
    point(name)
    if os.environ.get(HOLD_ENV) != name:
        return
    folder = Path(os.environ.get(HOLD_DIR_ENV) or ".")
    (folder / f"{name}.reached").write_text(str(os.getpid()))
    sys.stderr.write(f"holding at {name}\n")
    sys.stderr.flush()
    while not (folder / f"{name}.release").exists():  # noqa: ASYNC110 - another process creates the file
        await asyncio.sleep(0.05)
