"""The check metrics of the HTTP worker processes, exported by the process that runs them.

Prometheus scrapes one ``/metrics`` per pod (the gRPC process's); the workers
count their checks in their own ``aigc_auth_checks_total`` and
``aigc_auth_check_seconds`` and send the totals over their control pipe
(:func:`totals`), and ``aigc_auth_refusals_total`` and ``aigc_auth_answers_total`` likewise. :class:`CheckMetrics` replaces the metrics in this
process's registry with the sum of this process's own checks (gRPC ``Check``,
Envoy) and every worker's, so the series keep their names and never go down
when a worker is restarted (its last totals are kept).
"""
from __future__ import annotations

from collections import Counter as Tally
from typing import Any

from prometheus_client import REGISTRY
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

from .answers import ANSWERS
from .checker import CHECK_LATENCY, CHECKS, REFUSALS

# {"checks": {outcome: n}, "refusals": {reason: n}, "answers": {way: n}, "buckets": {le: cumulative n}, "sum": s}
Totals = dict[str, Any]
_TALLIES = (("checks", CHECKS, "outcome"), ("refusals", REFUSALS, "reason"), ("answers", ANSWERS, "way"))
_SUMMED = (*(key for key, _, _ in _TALLIES), "buckets")  # what is added up by label (or bucket) across processes


def totals() -> Totals:
    """This process's own check totals (what a worker sends)."""
    out: Totals = {}
    for key, counter, label in _TALLIES:
        out[key] = {sample.labels[label]: sample.value for metric in counter.collect() for sample in metric.samples
                    if sample.name.endswith("_total")}
    buckets: dict[str, float] = {}
    seconds = 0.0
    for metric in CHECK_LATENCY.collect():
        for sample in metric.samples:
            if sample.name.endswith("_bucket"):
                buckets[sample.labels["le"]] = sample.value
            elif sample.name.endswith("_sum"):
                seconds = sample.value
    return {**out, "buckets": buckets, "sum": seconds}


class CheckMetrics:
    """A Prometheus collector: this process's check metrics plus the workers' (one per process)."""

    _installed: CheckMetrics | None = None

    def __init__(self) -> None:
        self.live: dict[object, Totals] = {}  # worker slot -> its latest totals
        self.retired: dict[str, Any] = {key: Tally() for key in _SUMMED} | {"sum": 0.0}

    @classmethod
    def install(cls) -> CheckMetrics:
        """Take over the check metrics in the default registry (idempotent)."""
        if cls._installed is None:
            cls._installed = cls()
            REGISTRY.unregister(CHECKS)
            REGISTRY.unregister(CHECK_LATENCY)
            REGISTRY.unregister(REFUSALS)
            REGISTRY.unregister(ANSWERS)
            REGISTRY.register(cls._installed)
        return cls._installed

    def report(self, slot: object, value: Totals) -> None:
        self.live[slot] = value

    def retire(self, slot: object) -> None:
        """The worker in ``slot`` is gone: keep what it counted (a replacement starts from zero)."""
        last = self.live.pop(slot, None)
        if last:
            for key in _SUMMED:
                self.retired[key].update(last.get(key, {}))
            self.retired["sum"] += float(last.get("sum", 0.0))

    def collect(self) -> Any:
        total: dict[str, Any] = {key: Tally(self.retired[key]) for key in _SUMMED} | {"sum": self.retired["sum"]}
        for value in [totals(), *self.live.values()]:
            for key in _SUMMED:
                total[key].update(value.get(key, {}))
            total["sum"] += float(value.get("sum", 0.0))
        for key, counter, label in _TALLIES:
            family = CounterMetricFamily(counter._name, counter._documentation, labels=[label])
            for label_value, count in sorted(total[key].items()):
                family.add_metric([label_value], count)
            yield family
        latency = HistogramMetricFamily("aigc_auth_check_seconds", CHECK_LATENCY._documentation)
        buckets = sorted(total["buckets"].items(), key=lambda kv: float(kv[0]))
        latency.add_metric([], buckets=buckets, sum_value=total["sum"])
        yield latency
