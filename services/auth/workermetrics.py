"""The check metrics of the HTTP worker processes, exported by the process that runs them.

Prometheus scrapes one ``/metrics`` per pod (the gRPC process's); the workers
count their checks in their own ``aigc_auth_checks_total`` and
``aigc_auth_check_seconds`` and send the totals over their control pipe
(:func:`totals`), and ``aigc_auth_refusals_total`` likewise. :class:`CheckMetrics` replaces the metrics in this
process's registry with the sum of this process's own checks (gRPC ``Check``,
Envoy) and every worker's, so the series keep their names and never go down
when a worker is restarted (its last totals are kept).
"""
from __future__ import annotations

from collections import Counter as Tally
from typing import Any

from prometheus_client import REGISTRY
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

from .checker import CHECK_LATENCY, CHECKS, REFUSALS

Totals = dict[str, Any]  # {"checks": {outcome: n}, "refusals": {reason: n}, "buckets": {le: cumulative n}, "sum": s}


def totals() -> Totals:
    """This process's own check totals (what a worker sends)."""
    checks: dict[str, float] = {}
    for metric in CHECKS.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total"):
                checks[sample.labels["outcome"]] = sample.value
    refusals: dict[str, float] = {}
    for metric in REFUSALS.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total"):
                refusals[sample.labels["reason"]] = sample.value
    buckets: dict[str, float] = {}
    seconds = 0.0
    for metric in CHECK_LATENCY.collect():
        for sample in metric.samples:
            if sample.name.endswith("_bucket"):
                buckets[sample.labels["le"]] = sample.value
            elif sample.name.endswith("_sum"):
                seconds = sample.value
    return {"checks": checks, "refusals": refusals, "buckets": buckets, "sum": seconds}


class CheckMetrics:
    """A Prometheus collector: this process's check metrics plus the workers' (one per process)."""

    _installed: CheckMetrics | None = None

    def __init__(self) -> None:
        self.live: dict[object, Totals] = {}  # worker slot -> its latest totals
        self.retired: dict[str, Any] = {"checks": Tally(), "refusals": Tally(), "buckets": Tally(), "sum": 0.0}

    @classmethod
    def install(cls) -> CheckMetrics:
        """Take over the two metrics in the default registry (idempotent)."""
        if cls._installed is None:
            cls._installed = cls()
            REGISTRY.unregister(CHECKS)
            REGISTRY.unregister(CHECK_LATENCY)
            REGISTRY.unregister(REFUSALS)
            REGISTRY.register(cls._installed)
        return cls._installed

    def report(self, slot: object, value: Totals) -> None:
        self.live[slot] = value

    def retire(self, slot: object) -> None:
        """The worker in ``slot`` is gone: keep what it counted (a replacement starts from zero)."""
        last = self.live.pop(slot, None)
        if last:
            self.retired["checks"].update(last.get("checks", {}))
            self.retired["refusals"].update(last.get("refusals", {}))
            self.retired["buckets"].update(last.get("buckets", {}))
            self.retired["sum"] += float(last.get("sum", 0.0))

    def collect(self) -> Any:
        total: dict[str, Any] = {"checks": Tally(self.retired["checks"]), "refusals": Tally(self.retired["refusals"]),
                                 "buckets": Tally(self.retired["buckets"]), "sum": self.retired["sum"]}
        for value in [totals(), *self.live.values()]:
            total["checks"].update(value.get("checks", {}))
            total["refusals"].update(value.get("refusals", {}))
            total["buckets"].update(value.get("buckets", {}))
            total["sum"] += float(value.get("sum", 0.0))
        checks = CounterMetricFamily("aigc_auth_checks", CHECKS._documentation, labels=["outcome"])
        for outcome, count in sorted(total["checks"].items()):
            checks.add_metric([outcome], count)
        yield checks
        refusals = CounterMetricFamily("aigc_auth_refusals", REFUSALS._documentation, labels=["reason"])
        for reason, count in sorted(total["refusals"].items()):
            refusals.add_metric([reason], count)
        yield refusals
        latency = HistogramMetricFamily("aigc_auth_check_seconds", CHECK_LATENCY._documentation)
        buckets = sorted(total["buckets"].items(), key=lambda kv: float(kv[0]))
        latency.add_metric([], buckets=buckets, sum_value=total["sum"])
        yield latency
