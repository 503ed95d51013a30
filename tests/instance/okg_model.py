"""A model of kruise-game v1.0.0's GameServerSet scaling, for property tests of the allocator.

It follows `computeToScaleGs` and `GameServerScale` (pkg/controllers/gameserverset/gameserverset_manager.go):
the `game.kruise.io/reserve-ids` annotation holds the explicit reserve list last applied, the Advanced
StatefulSet's reserveOrdinals hold explicit + implicit ids, and with ReserveIds the controller writes the
union back into `spec.reserveGameServerIds`. The Advanced StatefulSet then runs the lowest `replicas`
ordinals not in its reserveOrdinals; the model asserts that this agrees with what the controller meant.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Controller:
    replicas: int = 0
    reserved: set[int] = field(default_factory=set)  # spec.reserveGameServerIds
    annotation: set[int] = field(default_factory=set)  # last explicit list applied
    asts_replicas: int = 0
    asts_reserve: set[int] = field(default_factory=set)
    pods: set[int] = field(default_factory=set)

    def write(self, replicas: int, reserved: set[int]) -> None:
        """What the gateway's GameServerSet update does."""
        self.replicas, self.reserved = replicas, set(reserved)

    def settled(self) -> bool:
        return self.replicas == self.asts_replicas and self.annotation == self.reserved

    def reconcile(self) -> None:
        if self.settled():
            return
        self._reconcile(self.asts_reserve, self.pods)

    def stale_reconcile(self, cached_asts_reserve: set[int], cached_pods: set[int]) -> None:
        """A reconcile reading the workload's reserve ordinals and the pods from a cache that lags (the
        cause of allocator.plan_realign); the workload then runs what the reserve list it is given says."""
        self._reconcile(set(cached_asts_reserve), set(cached_pods), check=False)

    def _reconcile(self, asts_reserve: set[int], pods: set[int], check: bool = True) -> None:
        explicit = set(self.reserved)
        not_exist = asts_reserve - self.annotation
        added_explicit = explicit - self.annotation
        deleted_explicit = self.annotation - explicit
        implicit = (not_exist - added_explicit) | deleted_explicit
        manage = {i for i in pods if i not in explicit}
        if len(manage) < self.replicas:
            i = 0
            while len(manage) < self.replicas:
                if i not in manage and i not in explicit:
                    implicit.discard(i)
                    manage.add(i)
                i += 1
        elif len(manage) > self.replicas:
            # DeleteSequence with equal opsState and priority: highest ordinal first.
            for i in sorted(manage, reverse=True)[: len(manage) - self.replicas]:
                manage.discard(i)
                implicit.add(i)
        new_reserve = implicit | explicit
        self.asts_reserve, self.asts_replicas = new_reserve, self.replicas
        expected = _lowest_not_in(self.asts_replicas, self.asts_reserve)
        if check:
            assert manage == expected, f"controller meant {sorted(manage)}, workload runs {sorted(expected)}"
        self.pods = expected
        self.reserved = set(new_reserve)  # ReserveIds: the controller writes the list back
        self.annotation = set(new_reserve)


def _lowest_not_in(count: int, excluded: set[int]) -> set[int]:
    out: set[int] = set()
    i = 0
    while len(out) < count:
        if i not in excluded:
            out.add(i)
        i += 1
    return out
