"""Idle auto-pause (issue 15) through `aigcctl` (its own process) and the REST bridge, against the real instance
service: `instances keep-alive`, `idle-exemptions list|create|delete`, POST …:keepAlive and /v1/idleExemptions."""
from __future__ import annotations

from typing import Any

import httpx
import pytest

from ..instance.conftest import SAMPLE
from .conftest import ctl_addresses, parsed, run_ctl
from .stack import Rest

pytestmark = pytest.mark.testbed


async def test_aigcctl_keep_alive_and_idle_exemptions(sample_gateway, start_bridge, issuer, k8s_namespace: str) -> None:
    flags = [*ctl_addresses(sample_gateway), "--namespace", k8s_namespace]

    async def cli(*args: str, user: str = "admin") -> Any:
        return await run_ctl(*flags, *args, token=issuer.mint(user, roles=["admin"] if user == "admin" else []))

    made = parsed(await cli("instances", "install", SAMPLE, "--no-wait", "-o", "json", user="alice"))
    kept = parsed(await cli("instances", "keep-alive", made["name"], "-o", "json", user="alice"))
    assert kept["name"] == made["name"] and "scheduledPauseTime" not in kept
    assert (await cli("instances", "keep-alive", made["name"], user="bob")).code == 7  # PERMISSION_DENIED

    created = parsed(await cli("idle-exemptions", "create", "carol", "--reason", "overnight renders", "-o", "json"))
    assert (created["name"], created["reason"], created["createdBy"]) == (
        "idleExemptions/carol", "overnight renders", "admin")
    assert (await cli("idle-exemptions", "create", "idleExemptions/carol")).code == 5  # ALREADY_EXISTS
    assert [e["name"] for e in parsed(await cli("idle-exemptions", "list", "-o", "json"))] == ["idleExemptions/carol"]
    table = await cli("idle-exemptions", "list")
    assert table.code == 0 and "carol" in table.stdout and "overnight renders" in table.stdout, table
    assert (await cli("idle-exemptions", "list", user="alice")).code == 7
    parsed(await cli("idle-exemptions", "delete", "carol", "-o", "json"))
    assert (await cli("idle-exemptions", "delete", "carol")).code == 4  # NOT_FOUND

    bridge = await start_bridge(sample_gateway)
    rest = Rest(bridge.url, issuer, sample_gateway, k8s_namespace)
    async with httpx.AsyncClient(base_url=rest.url, timeout=60) as http:
        r = await http.post(f"/v1/{made['name']}:keepAlive", headers=rest.headers("alice"), json={})
        assert r.status_code == 200 and r.json()["name"] == made["name"], r.text
        r = await http.post("/v1/idleExemptions", headers=rest.headers("admin"),
                            json={"name": "idleExemptions/dave", "reason": "demo"})
        assert r.status_code == 200 and r.json()["name"] == "idleExemptions/dave", r.text
        r = await http.get("/v1/idleExemptions", headers=rest.headers("admin"))
        assert [e["name"] for e in r.json()["idleExemptions"]] == ["idleExemptions/dave"], r.text
        r = await http.delete("/v1/idleExemptions/dave", headers=rest.headers("admin"))
        assert r.status_code == 200, r.text
