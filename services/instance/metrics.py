"""Prometheus metrics of the instance service."""
from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

OPERATIONS = Counter("aigc_instance_operations_total", "Instance operations by kind and outcome.",
                     ["operation", "outcome"])
ALLOCATOR_CONFLICTS = Counter("aigc_instance_allocator_conflicts_total",
                              "GameServerSet writes refused with 409 (stale resourceVersion).")
REALIGNS = Counter("aigc_instance_allocator_realigns_total",
                   "GameServerSet writes that put back a live set the controller had changed on its own "
                   "(see allocator.plan_realign).")
ALLOCATOR_RETRIES = Counter("aigc_instance_allocator_retries_total",
                            "Allocator attempts repeated after a conflict.")
INTENTS_RESOLVED = Counter("aigc_instance_intents_resolved_total",
                           "Interrupted operations resolved from (replicas, reserveGameServerIds).",
                           ["operation", "applied"])
LOCK_WAIT = Histogram("aigc_instance_allocator_lock_wait_seconds", "Time waiting for a template's allocator lock.",
                      buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
SETTLE_WAIT = Histogram("aigc_instance_controller_settle_seconds",
                        "Time waiting for the OpenKruiseGame controller to finish the previous write.",
                        buckets=(0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
QUEUED = Gauge("aigc_instance_allocator_queued", "Calls queued for a template's next GameServerSet write, by kind "
               "(up: installs and resumes; down: pauses and uninstalls).", ["template", "kind"])
INSTALL_TO_RUNNING = Histogram("aigc_instance_install_to_running_seconds",
                               "Time from an install to the instance's first RUNNING state.",
                               buckets=(1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200))
VIOLATIONS = Gauge("aigc_instance_consistency_violations", "Invariant violations found by the last reconcile pass.",
                   ["template"])
RECONCILER_LEADER = Gauge("aigc_instance_reconciler_leader", "1 while this process holds the reconciler lease.")
IDLE_PAUSES = Counter("aigc_instance_idle_pauses_total", "Instances paused by the idle culler (issue 15).")
IDLE_WARNINGS = Counter("aigc_instance_idle_warnings_total",
                        "Pauses for idleness announced to the owner (WatchInstance event, scheduled_pause_time).")
IDLE_PROBE_FAILURES = Counter("aigc_instance_idle_probe_failures_total",
                              "Busy probes without a usable answer, by why (no_address, unreachable, status, "
                              "not_json); such a probe does not count as activity.", ["why"])
ROLLOUT_INSTANCES = Gauge("aigc_instance_rollout_instances",
                          "Live pods of a template per revision, as the last rollout step read them (issue 14).",
                          ["template", "revision"])
ROLLOUT_PENDING = Gauge("aigc_instance_rollout_pending",
                        "Instances of a template left on an old revision by the last rollout step, by why: busy "
                        "(WHEN_IDLE), manual (MANUAL, not asked), paused (moves when resumed).",
                        ["template", "reason"])
