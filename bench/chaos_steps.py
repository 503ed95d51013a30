"""bench/chaos.py's schedule and table: the faults, one row per fault, and what makes a row good."""
from __future__ import annotations

import random
from dataclasses import dataclass, field

from chaos_handoff import HANDOFF_KINDS, HANDOFF_LINKS
from chaos_userdeleted import USERDELETED_LINKS

LINKS = ("pg-instance", "pg-auth", "pg-usersync", "kube", "logto", "grpc-instance")
KINDS = ("latency", "bandwidth", "reset", "timeout", "down")
RESTARTS = ("pg-restart", "kube-restart")


@dataclass
class Step:
    link: str
    fault: str
    seconds: float
    attempted: int = 0
    ok: int = 0
    retried: int = 0
    failed: int = 0
    failures: list[str] = field(default_factory=list)
    refused: dict[str, int] = field(default_factory=dict)  # answers that are not retried, by reason
    owner_checks: int = 0
    owner_allowed: int = 0
    refused_unknown: int = 0  # owner checks refused while the auth owner map was unknown (fail closed)
    allowed_while_unknown: int = 0
    nobody_checks: int = 0
    nobody_allowed: int = 0
    recovery: float = float("nan")
    consistent: bool | None = None
    violations: list[str] = field(default_factory=list)
    mirror_lost: list[str] = field(default_factory=list)
    half_done: list[str] = field(default_factory=list)  # a hand-off left incomplete after its resumption
    notes: list[str] = field(default_factory=list)  # what a restart or a hand-off did, printed under the row

    @property
    def name(self) -> str:
        return self.fault if self.fault in RESTARTS else f"{self.link}:{self.fault}"

    @property
    def good(self) -> bool:
        return (not self.failed and self.nobody_allowed == 0 and self.allowed_while_unknown == 0
                and bool(self.consistent) and not self.mirror_lost and not self.half_done
                and self.recovery == self.recovery)


def schedule(seed: int, seconds: float, only: str = "all", kube_down: float = 5.0) -> list[Step]:
    """Every (link, fault) and both restarts, in a seeded order; ``only``: a comma list of names. The apiserver
    restart keeps the apiserver down ``kube_down`` seconds at most (plus its start-up): the test bed is shared."""
    steps = [Step(link, kind, seconds) for link in LINKS for kind in KINDS]
    steps += [Step(link, kind, seconds) for link in HANDOFF_LINKS + USERDELETED_LINKS for kind in HANDOFF_KINDS]
    steps += [Step("pg", "pg-restart", seconds), Step("kube", "kube-restart", min(seconds, kube_down))]
    random.Random(seed).shuffle(steps)
    if only != "all":
        wanted = only.split(",")
        steps = sorted((s for s in steps if s.name in wanted), key=lambda s: wanted.index(s.name))
    return steps


def print_table(steps: list[Step], seed: int, *, header: bool = True) -> None:
    head = (f"{'fault':26} {'s':>3} {'ops':>4} {'ok':>4} {'retr':>4} {'fail':>4} {'own chk':>7} {'own ok':>6} "
            f"{'closed':>6} {'nobody':>6} {'n-ok':>4} {'recov s':>7}  invariants")
    if header:
        print(f"\nchaos: seed {seed}, {len(steps)} faults")
        print(head)
        print("-" * len(head))
    for s in steps:
        inv = ("ok" if s.good else "BROKEN") + ("" if s.consistent else f" consistency={s.violations}") + \
              (f" mirror-lost={s.mirror_lost[:3]}" if s.mirror_lost else "") + \
              (f" allowed-while-unknown={s.allowed_while_unknown}" if s.allowed_while_unknown else "") + \
              (f" half-done={s.half_done}" if s.half_done else "")
        print(f"{s.name:26} {s.seconds:3.0f} {s.attempted:4d} {s.ok:4d} {s.retried:4d} {s.failed:4d} "
              f"{s.owner_checks:7d} {s.owner_allowed:6d} {s.refused_unknown:6d} {s.nobody_checks:6d} "
              f"{s.nobody_allowed:4d} {s.recovery:7.1f}  {inv}")
        for line in s.failures[:5]:
            print("    failed:", line)
        for line in s.notes:
            print("    note:", line)
        if s.refused:
            print("    refused (not retried, the model's right answers):", s.refused)
    if not header:
        return
    print("columns: own chk/own ok = owners' auth checks / allowed; closed = owner checks refused because the "
          "owner map was unknown (fail closed); nobody/n-ok = checks of a user who owns nothing / allowed")
