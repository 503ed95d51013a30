"""The options of every gRPC channel a gateway client opens (service to service, aigcctl).

Two things every client needs and gRPC does not do by default:

* **Balancing.** ``round_robin`` spreads calls over every address a target resolves to: a ``dns:///`` name of a
  headless Service (one A record per pod) or ``ipv4:a:p,b:p``. gRPC's default, ``pick_first``, keeps one HTTP/2
  connection to one address, so behind a ClusterIP Service every call of a process would go to one replica.
* **Retrying reads on a dead replica.** A replica killed with SIGKILL drops its connections without a GOAWAY; a
  call already written to it, or picked for it before the balancer saw the connection go, fails UNAVAILABLE
  although another replica is READY. gRPC retries transparently only calls that never reached a server, so the
  service config asks for a retry (gRPC A6 ``retryPolicy``) of the calls that are safe to run twice: every method
  whose REST mapping is a GET (AIP-131/132, no side effect) and the health check. Mutating calls are not retried
  here (one without a ``request_id`` could run twice); callers retry those with their ``request_id``, answered from
  the first outcome (AIP-155). The REST bridge asks for the same (``bridge/retry.go``).

And one gRPC's default gets wrong for a link between two services: **reconnect back-off** grows 1.6 times per
failed attempt up to 120 s, and a call on a channel waiting out its back-off fails at once. After a 30 s outage of
the instance service, the template service's DeleteTemplate hand-off still failed CLEANUP_INCOMPLETE for 20 s after
the service was back (docs/chaos.md, `grpc-template-instance:down`); capped at 5 s, a channel tries again within
5 s of the peer's return.
"""
from __future__ import annotations

import json

from google.api import annotations_pb2

from .api.v1 import audit_pb2, auth_pb2, instance_pb2, template_pb2, usersync_pb2

_READ_RETRY = {
    "maxAttempts": 4,
    "initialBackoff": "0.05s",
    "maxBackoff": "0.5s",
    "backoffMultiplier": 2,
    "retryableStatusCodes": ["UNAVAILABLE"],
}


def read_methods() -> list[dict[str, str]]:
    """Every gateway method mapped to an HTTP GET, and the health check, as service-config names."""
    names = []
    for module in (audit_pb2, auth_pb2, instance_pb2, template_pb2, usersync_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                if method.GetOptions().Extensions[annotations_pb2.http].WhichOneof("pattern") == "get":
                    names.append({"service": service.full_name, "method": method.name})
    names.sort(key=lambda n: (n["service"], n["method"]))
    return [*names, {"service": "grpc.health.v1.Health", "method": "Check"}]


def _service_config() -> str:
    return json.dumps({
        "loadBalancingConfig": [{"round_robin": {}}],
        "methodConfig": [{"name": read_methods(), "retryPolicy": _READ_RETRY}],
    })


CLIENT_CHANNEL_OPTIONS: tuple[tuple[str, str | int], ...] = (
    ("grpc.lb_policy_name", "round_robin"),
    ("grpc.enable_retries", 1),
    ("grpc.service_config", _service_config()),
    ("grpc.initial_reconnect_backoff_ms", 500),
    ("grpc.max_reconnect_backoff_ms", 5000),
)
