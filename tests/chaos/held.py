"""What every fault of the chaos tests must leave behind (docs/chaos.md): the promises of issue 18, one place."""
from __future__ import annotations

from typing import Any


def assert_held(step: Any, *, some_ok: bool = True) -> None:
    """After one fault (a bench/chaos_steps.Step): no non-owner allowed, no allow while the owner map was
    unknown, no operation failed beyond the documented retry, recovered, CheckConsistency clean, no Logto mirror
    write lost, nothing half-done; ``some_ok``: and some operations went through."""
    assert step.nobody_allowed == 0, f"{step.name}: a non-owner was allowed"
    assert step.allowed_while_unknown == 0, f"{step.name}: allowed while the owner map was unknown"
    assert step.failed == 0, f"{step.name}: {step.failures}"
    assert step.half_done == [], f"{step.name}: {step.half_done}"
    assert step.recovery == step.recovery, f"{step.name}: did not recover within 120 s"  # NaN: never
    assert step.consistent, f"{step.name}: {step.violations}"
    assert step.mirror_lost == [], f"{step.name}: {step.mirror_lost}"
    if some_ok:
        assert step.ok > 0, f"{step.name}: no operation went through"
