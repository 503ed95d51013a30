"""Prometheus metrics of the gRPC servers, named as go-grpc-prometheus names them."""
from __future__ import annotations

import logging

from prometheus_client import Counter, Gauge, Histogram, start_http_server

log = logging.getLogger(__name__)

STARTED = Counter("grpc_server_started_total", "RPCs started on the server.", ["grpc_service", "grpc_method"])
HANDLED = Counter("grpc_server_handled_total", "RPCs completed on the server, by status code.",
                  ["grpc_service", "grpc_method", "grpc_code"])
LATENCY = Histogram("grpc_server_handling_seconds", "Time from the start of an RPC to its status.",
                    ["grpc_service", "grpc_method"],
                    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
IN_FLIGHT = Gauge("grpc_server_in_flight", "RPCs being handled now.", ["grpc_service", "grpc_method"])

_started_on: str | None = None


def serve(listen: str) -> None:
    """Expose /metrics on ``host:port`` (once per process; '' turns it off)."""
    global _started_on
    if not listen or _started_on:
        return
    host, _, port = listen.rpartition(":")
    start_http_server(int(port), addr=host or "0.0.0.0")
    _started_on = listen
    log.info("metrics on http://%s/metrics", listen)
