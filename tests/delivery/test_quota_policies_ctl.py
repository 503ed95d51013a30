"""Quota policies (issue 16) through `aigcctl quotas` (its own process, as an admin runs it) and through the REST
bridge (GET and PATCH with the update mask as a query parameter), against the real instance service."""
from __future__ import annotations

from typing import Any

import httpx
import pytest

from ..plugins.gateway import make_settings
from .conftest import ctl_addresses, parsed, run_ctl
from .stack import Rest

pytestmark = pytest.mark.testbed

BAD_REQUEST = "type.googleapis.com/google.rpc.BadRequest"


@pytest.fixture
async def gateway(start_gateway, database_url, issuer, testbed, k8s_namespace) -> Any:
    settings = make_settings(database_url, issuer, namespaces=[k8s_namespace],
                             kubernetes={"kubeconfig": str(testbed.kubeconfig)},
                             instance={"quotas": {"default": {"installed": 3}}})
    return await start_gateway("instance", settings=settings)


async def test_aigcctl_quotas(gateway, issuer, k8s_namespace: str) -> None:
    flags = [*ctl_addresses(gateway), "--namespace", k8s_namespace]

    async def cli(*args: str, user: str = "admin") -> Any:
        return await run_ctl(*flags, *args, token=issuer.mint(user, roles=["admin"] if user == "admin" else []))

    got = parsed(await cli("quotas", "get", "default", "-o", "json"))
    assert got["configured"]["installed"] == {"maximum": 3} and "running" not in got and got["etag"] == "0"
    set_ = parsed(await cli("quotas", "set", "default", "--running", "2", "--gpus", "unlimited", "-o", "json"))
    assert (set_["running"], set_["gpus"], set_["etag"], set_["updatedBy"]) == (
        {"maximum": 2}, {"unlimited": True}, "1", "admin")
    parsed(await cli("quotas", "set", "user/alice", "--running", "0", "-o", "json"))
    tpl = parsed(await cli("quotas", "set", "template/sd", "--running", "4", "-o", "json"))
    assert tpl["name"] == f"namespaces/{k8s_namespace}/templates/sd/quotaPolicy"
    parsed(await cli("quotas", "set", "template/-", "--running", "9", "-o", "json"))
    listed = parsed(await cli("quotas", "list", "-o", "json"))
    assert [p["name"] for p in listed] == ["quotaPolicies/default", "users/alice/quotaPolicy",
                                           "namespaces/-/templates/-/quotaPolicy", tpl["name"]]
    table = await cli("quotas", "list")
    assert table.code == 0 and "3 (config)" in table.stdout and "unlimited" in table.stdout, table

    cleared = parsed(await cli("quotas", "clear", "default", "--field", "running", "-o", "json"))
    assert "running" not in cleared and cleared["gpus"] == {"unlimited": True} and cleared["etag"] == "2"
    assert set(parsed(await cli("quotas", "clear", "user/alice", "-o", "json"))) >= {"name", "etag"}
    assert "running" not in parsed(await cli("quotas", "get", "users/alice/quotaPolicy", "-o", "json"))

    stale = await cli("quotas", "set", "default", "--running", "1", "--etag", "1")
    assert stale.code == 5 and "changed since it was read" in stale.stderr, stale  # ABORTED: CONFLICT
    bad = await cli("quotas", "set", "template/-", "--gpus", "1")
    assert bad.code == 3 and "update_mask" in bad.stderr, bad  # a user-only limit on a template: INVALID
    assert (await cli("quotas", "set", "default", "--running", "lots")).code == 2  # USAGE, nothing sent
    assert (await cli("quotas", "set", "default")).code == 2
    assert (await cli("quotas", "get", "nonsense")).code == 2
    assert (await cli("quotas", "list", user="alice")).code == 7  # PERMISSION_DENIED


async def test_quota_policies_over_rest(gateway, start_bridge, issuer, k8s_namespace: str) -> None:
    bridge = await start_bridge(gateway)
    rest = Rest(bridge.url, issuer, gateway, k8s_namespace)
    async with httpx.AsyncClient(base_url=rest.url, timeout=60) as http:
        admin = rest.headers("admin")
        r = await http.get("/v1/quotaPolicies/default", headers=admin)
        assert r.status_code == 200 and r.json()["configured"]["installed"] == {"maximum": 3}, r.text

        r = await http.patch("/v1/users/alice/quotaPolicy", params={"updateMask": "running,gpus"}, headers=admin,
                             json={"running": {"maximum": 2}, "gpus": {"unlimited": True}, "etag": "0"})
        assert r.status_code == 200, r.text
        assert (r.json()["running"], r.json()["gpus"], r.json()["etag"]) == ({"maximum": 2}, {"unlimited": True}, "1")
        r = await http.patch("/v1/users/alice/quotaPolicy", params={"update_mask": "gpus"}, headers=admin, json={})
        assert r.status_code == 200 and "gpus" not in r.json() and r.json()["running"] == {"maximum": 2}, r.text
        r = await http.patch("/v1/namespaces/-/templates/-/quotaPolicy", params={"updateMask": "running"},
                             headers=admin, json={"running": {"maximum": 5}})
        assert r.status_code == 200 and r.json()["name"] == "namespaces/-/templates/-/quotaPolicy", r.text
        r = await http.patch("/v1/roles/lab/quotaPolicy", headers=admin, json={"installed": {"maximum": 1}})
        assert r.status_code == 200 and r.json()["installed"] == {"maximum": 1}, r.text  # no mask: every limit
        got = await http.get(f"/v1/namespaces/{k8s_namespace}/templates/sd/quotaPolicy", headers=admin)
        assert got.status_code == 200 and got.json()["etag"] == "0", got.text
        listed = (await http.get("/v1/quotaPolicies", headers=admin)).json()
        assert [p["name"] for p in listed["quotaPolicies"]] == [
            "quotaPolicies/default", "roles/lab/quotaPolicy", "users/alice/quotaPolicy",
            "namespaces/-/templates/-/quotaPolicy"]

        r = await http.patch("/v1/users/alice/quotaPolicy", params={"updateMask": "cpus"}, headers=admin, json={})
        assert r.status_code == 400 and r.json()["code"] == 3, r.text
        [bad] = [d for d in r.json()["details"] if d["@type"] == BAD_REQUEST]
        assert [v["field"] for v in bad["fieldViolations"]] == ["update_mask"]
        r = await http.patch("/v1/users/alice/quotaPolicy", params={"updateMask": "running"}, headers=admin,
                             json={"running": {"maximum": 9}, "etag": "1"})
        assert r.status_code == 409 and r.json()["code"] == 10, r.text  # ABORTED: changed since etag 1
        r = await http.get("/v1/quotaPolicies", headers=rest.headers("alice"))
        assert r.status_code == 403 and r.json()["code"] == 7, r.text
