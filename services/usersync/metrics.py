"""Prometheus metrics of usersync (served on the process's /metrics with the gRPC ones)."""
from __future__ import annotations

from prometheus_client import Counter, Gauge

LOGTO_REQUESTS = Counter("aigc_usersync_logto_requests_total", "Logto Management API requests, by call and status.",
                         ["call", "status"])
OUTBOX_ROWS = Counter("aigc_usersync_outbox_rows_total",
                      "Outbox rows finished: delivered, superseded (by a sync), or abandoned (Logto refused them).",
                      ["outcome"])
OUTBOX_FAILURES = Counter("aigc_usersync_outbox_failures_total",
                          "Delivery attempts that failed and will be retried (Logto unavailable).")
OUTBOX_PENDING = Gauge("aigc_usersync_outbox_pending", "Outbox rows not yet delivered (at the last delivery pass).")
WEBHOOKS = Counter("aigc_usersync_webhooks_total", "Logto webhook deliveries, by event and outcome.",
                   ["event", "outcome"])
DRIFT_FOUND = Counter("aigc_usersync_drift_found_total", "Custom-data entries found to differ from PostgreSQL.")
DRIFT_REPAIRED = Counter("aigc_usersync_drift_repaired_total", "Custom-data entries repaired by reconcile.")
DISPUTED_INSTANCES = Gauge("aigc_usersync_disputed_instances",
                           "Ids several users claim in the original's data, kept out of allocation until an admin "
                           "resolves them (ResolveDisputedInstance).")
IMPORT_ENTRIES = Counter("aigc_usersync_import_entries_total", "Entries seen by ImportFromLogto, by result.",
                         ["result"])
