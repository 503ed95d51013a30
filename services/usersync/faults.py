"""The usersync service's fault points (crash tests, issue 20); the mechanism is the core's :mod:`aigc_gateway.faults`.

Each sits after a call's effect (a Logto write, or a committed transaction) and before its stored outcome,
where a killed replica leaves a retry of the same request to find what it did (replay.py).
"""
from __future__ import annotations

from aigc_gateway.faults import POINTS, armed, reach, register

USERSYNC_POINTS = ("usersync.sync.after_write", "usersync.cleanup.after_queue", "usersync.import.after_template",
                   "usersync.reconcile.after_write", "usersync.resolve.after_commit")
register(USERSYNC_POINTS)

__all__ = ["POINTS", "USERSYNC_POINTS", "armed", "reach"]
