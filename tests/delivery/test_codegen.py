"""The bridge's Go code and the OpenAPI document are generated from protos/ and committed:
they must match what the pinned generators make now, and cover every RPC."""
from __future__ import annotations

import json
import os
import re
import subprocess

from google.protobuf import descriptor_pool

from aigc_gateway.api.v1 import audit_pb2, auth_pb2, instance_pb2, template_pb2, usersync_pb2  # noqa: F401

from .conftest import REPO, load_bridge_module, require_go

OPENAPI = REPO / "docs" / "openapi" / "aigc-gateway.swagger.json"
SERVICES = ["TemplateService", "InstanceService", "AuthService", "UserSyncService", "AuditService"]
ERROR_STATUSES = {"400", "401", "403", "404", "409", "429", "503"}


def test_generated_bridge_code_and_openapi_are_up_to_date() -> None:
    require_go()
    stale = load_bridge_module("generate").check()
    assert not stale, f"run `python bridge/generate.py`; stale: {stale}"


def test_every_rpc_has_an_openapi_operation_with_status_errors() -> None:
    doc = json.loads(OPENAPI.read_text())
    operations = {op["operationId"]: op for path in doc["paths"].values() for op in path.values()}
    pool = descriptor_pool.Default()
    expected = {f"{s}_{m.name}" for s in SERVICES for m in pool.FindServiceByName(f"aigc.gateway.v1.{s}").methods}
    # An RPC's additional HTTP bindings are operations of their own, numbered from 2 (GetQuotaPolicy2...).
    assert expected == {re.sub(r"(?<=[a-z])[2-9]$", "", op_id) for op_id in operations}, \
        "OpenAPI operations differ from the RPCs"
    for op_id, op in operations.items():
        assert ERROR_STATUSES <= set(op["responses"]), op_id
        assert op["responses"]["404"]["schema"] == {"$ref": "#/definitions/Status"}, op_id
    # Resource names are expanded into one parameter per segment: no parameter holds a slash.
    for path in doc["paths"]:
        assert not any(p in path for p in ("{name}", "{name_", "{parent}")), path
    watch = doc["paths"]["/v1/namespaces/{namespace}/templates/{template}/instances/{instance}:watch"]["get"]
    assert watch["produces"] == ["application/x-ndjson"]


def test_bridge_go_unit_tests() -> None:
    require_go()
    env = {**os.environ, "GOFLAGS": "-buildvcs=false -mod=readonly", "CGO_ENABLED": "0"}
    result = subprocess.run(["go", "test", "./..."], cwd=REPO / "bridge", env=env, capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok  \tgithub.com/aigc-gateway/aigc-gateway/bridge" in result.stdout
