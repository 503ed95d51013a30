"""The template service's fault points (crash tests, issue 20); the mechanism is the core's :mod:`aigc_gateway.faults`.

Each sits between a write to Kubernetes (or the effect committed before it) and the call's stored outcome,
where a killed replica leaves a retry to find what it did (replay.py).
"""
from __future__ import annotations

from aigc_gateway.faults import POINTS, armed, reach, register

TEMPLATE_POINTS = ("template.create.after_write", "template.update.after_write", "template.delete.after_effect",
                   "template.delete.after_delete")
register(TEMPLATE_POINTS)

__all__ = ["POINTS", "TEMPLATE_POINTS", "armed", "reach"]
