"""UpdateInstance (issue 14) through `aigcctl instances upgrade` (its own process) and the REST bridge's POST
…:upgrade, against the real instance service: the owner's call answers the instance, a stranger's is refused."""
from __future__ import annotations

from typing import Any

import httpx
import pytest

from ..instance.conftest import SAMPLE
from .conftest import ctl_addresses, parsed, run_ctl
from .stack import Rest

pytestmark = pytest.mark.testbed


async def test_aigcctl_and_rest_upgrade(sample_gateway, start_bridge, issuer, k8s_namespace: str) -> None:
    flags = [*ctl_addresses(sample_gateway), "--namespace", k8s_namespace]

    async def cli(*args: str, user: str = "admin") -> Any:
        return await run_ctl(*flags, *args, token=issuer.mint(user, roles=["admin"] if user == "admin" else []))

    made = parsed(await cli("instances", "install", SAMPLE, "-o", "json", user="alice"))
    upgraded = parsed(await cli("instances", "upgrade", made["name"], "-o", "json", user="alice"))
    # Nothing to update: the answer is the instance on the template's current revision.
    assert upgraded["name"] == made["name"] and upgraded["revision"] and not upgraded.get("updateAvailable")
    table = await cli("instances", "upgrade", made["name"], user="alice")
    assert table.code == 0 and "upgrade requested" in table.stdout, table
    assert (await cli("instances", "upgrade", made["name"], user="bob")).code == 7  # PERMISSION_DENIED

    bridge = await start_bridge(sample_gateway)
    rest = Rest(bridge.url, issuer, sample_gateway, k8s_namespace)
    async with httpx.AsyncClient(base_url=rest.url, timeout=60) as http:
        r = await http.post(f"/v1/{made['name']}:upgrade", headers=rest.headers("alice"), json={})
        assert r.status_code == 200 and r.json()["name"] == made["name"], r.text
        r = await http.post(f"/v1/{made['name']}:upgrade", headers=rest.headers("bob"), json={})
        assert r.status_code == 403, r.text
