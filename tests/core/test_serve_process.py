"""`aigc-gateway serve` as a real process: the embedded SQLite default, health,
metrics, JSON logs with the request id, and a clean exit on SIGTERM."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import pytest

from aigc_gateway.api.v1 import audit_pb2, audit_pb2_grpc, auth_pb2, auth_pb2_grpc

from ..plugins.auth_stack import free_port
from ..plugins.gateway import bearer
from ..served import wait_serving


@pytest.fixture
def served(tmp_path: Path, issuer):
    ports = {name: free_port() for name in ("template", "instance", "auth", "usersync", "metrics")}
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text(json.dumps({
        "data_dir": str(tmp_path / "data"),
        "oidc": {"issuer": issuer.url, "audience": [issuer.audience]},
        "servers": {**{n: {"listen": f"127.0.0.1:{ports[n]}"} for n in ("template", "instance", "auth", "usersync")},
                    "metrics_listen": f"127.0.0.1:{ports['metrics']}", "shutdown_grace_seconds": 2},
    }))
    log = (tmp_path / "serve.log").open("w+")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIGC_GATEWAY")}
    proc = subprocess.Popen([sys.executable, "-m", "aigc_gateway.cli", "serve", "all", "-c", str(cfg)],
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    yield proc, ports, tmp_path / "serve.log"
    if proc.poll() is None:
        proc.kill()
        proc.wait()


async def test_serve_all_on_embedded_sqlite(served, issuer) -> None:
    proc, ports, log_path = served
    deadline = time.monotonic() + 60
    for name in ("template", "instance", "auth", "usersync"):
        await wait_serving(ports[name], deadline)
    assert (log_path.parent / "data" / "aigc-gateway.sqlite3").exists()

    async with grpc.aio.insecure_channel(f"127.0.0.1:{ports['auth']}") as channel:
        me = await auth_pb2_grpc.AuthServiceStub(channel).WhoAmI(
            auth_pb2.WhoAmIRequest(), metadata=bearer(issuer.mint("carol")) + (("x-request-id", "req-abc-123"),))
        assert me.subject == "carol"
        audit_stub = audit_pb2_grpc.AuditServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError):
            await audit_stub.ListAuditEvents(audit_pb2.ListAuditEventsRequest(), metadata=bearer(issuer.mint("carol")))
        events = await audit_stub.ListAuditEvents(audit_pb2.ListAuditEventsRequest(),
                                                  metadata=bearer(issuer.mint("root", roles=["admin"])))
        assert [(e.actor, e.outcome) for e in events.audit_events] == [("carol", audit_pb2.AuditEvent.DENIED)]

    metrics = urllib.request.urlopen(f"http://127.0.0.1:{ports['metrics']}/metrics", timeout=5).read().decode()
    assert 'grpc_server_handled_total{grpc_code="OK",grpc_method="WhoAmI",grpc_service="aigc.gateway.v1.AuthService"}' \
        in metrics
    assert "grpc_server_handling_seconds_bucket" in metrics and "grpc_server_in_flight" in metrics

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
    access = [line for line in lines if line.get("request_id") == "req-abc-123" and line["logger"] == "aigc_gateway.calls"]
    assert access and access[0]["rpc"] == "AuthService.WhoAmI" and access[0]["principal"] == "carol"
    assert access[0]["grpc_code"] == "OK"
    assert any("shutting down" in line.get("message", "") for line in lines)
