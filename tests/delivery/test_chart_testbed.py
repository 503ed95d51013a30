"""The chart on the test bed: every rendered object is accepted by the apiserver in a server-side
dry run, and each service's ServiceAccount can do exactly that service's work (RBAC on)."""
from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from aigc_gateway.config import KubernetesConfig
from aigc_gateway.errors import Aborted, GatewayError
from aigc_gateway.kube import GSS, POD, PVC, Kube
from tests.plugins.kube import load_sample

from .chart import SAMPLE_VALUES, SERVICES, render, rules_of
from .serviceaccounts import allowed, apply, token_kubeconfig

pytestmark = pytest.mark.testbed


def _kubectl(testbed: Any) -> str:
    """The test bed's kubectl (also when the test bed is used through $KUBECONFIG), else one on PATH."""
    found = testbed.kubectl or os.environ.get("AIGC_TESTBED_KUBECTL") or shutil.which("kubectl")
    if not found:
        pytest.skip("needs kubectl (the test bed builds one)")
    return found


@pytest.mark.parametrize("values_file", [None, *SAMPLE_VALUES], ids=lambda p: p.stem if p else "defaults")
def test_rendered_objects_pass_a_server_side_dry_run(helm: Path, testbed: Any, k8s_namespace: str,
                                                      values_file: Path | None) -> None:
    objects = render(helm, k8s_namespace, *([values_file] if values_file else []))
    out = apply(_kubectl(testbed), testbed.kubeconfig, objects, dry_run=True)
    # One "(server dry run)" line per object: none was skipped.
    assert out.count("(server dry run)") == len(objects), out


def test_optional_parts_pass_a_dry_run_too(helm: Path, testbed: Any, k8s_namespace: str) -> None:
    objects = render(helm, k8s_namespace, **{
        "ingress.dashboard": json.dumps({"serviceName": "dashboard", "servicePort": 3000}),
        "networkPolicy.grpcFrom": json.dumps([{"namespaceSelector": {"matchLabels": {"team": "ops"}}}]),
        "podAntiAffinity": json.dumps("hard"), "bridge.trustedOrigins": json.dumps(["https://ui.example.com"]),
        "namespaces": json.dumps([k8s_namespace])})
    apply(_kubectl(testbed), testbed.kubeconfig, objects, dry_run=True)


# What each ServiceAccount must be refused: one operation its service never needs.
REFUSED = {
    "template": ("", "pods", "delete"),
    "instance": ("game.kruise.io", "gameserversets", "create"),
    "auth": ("", "pods", "get"),
    "usersync": ("", "persistentvolumeclaims", "delete"),
}


async def test_each_service_account_has_exactly_its_rules(helm: Path, testbed: Any, k8s_namespace: str,
                                                         tmp_path: Path) -> None:
    ns = k8s_namespace
    objects = render(helm, ns, namespaces=json.dumps([ns]))
    rbac = [o for o in objects if o["kind"] in ("ServiceAccount", "Role", "RoleBinding")]
    apply(_kubectl(testbed), testbed.kubeconfig, rbac)
    for service in SERVICES:
        kubeconfig = await token_kubeconfig(testbed.kubeconfig, ns, f"gw-aigc-gateway-{service}",
                                            tmp_path / f"{service}.kubeconfig")
        for group, resource, verb in sorted(rules_of(objects, service)):
            assert await allowed(kubeconfig, ns, group, resource, verb), (service, resource, verb)
        assert not await allowed(kubeconfig, ns, *REFUSED[service]), (service, REFUSED[service])
        # Nothing outside the namespaces it is given.
        assert not await allowed(kubeconfig, "default", "game.kruise.io", "gameserversets", "list"), service


async def _kube(kubeconfig: Path) -> Kube:
    return await Kube.connect(KubernetesConfig(kubeconfig=str(kubeconfig)))


async def test_service_accounts_do_their_work_through_the_kube_adapter(helm: Path, testbed: Any,
                                                                       k8s_namespace: str, tmp_path: Path) -> None:
    """The same calls the services make, through the services' own Kubernetes adapter, with each
    service's token: allowed ones work, the one it does not need is refused with 403."""
    ns = k8s_namespace
    objects = render(helm, ns, namespaces=json.dumps([ns]))
    apply(_kubectl(testbed), testbed.kubeconfig, [o for o in objects if o["kind"] in ("ServiceAccount", "Role",
                                                                                      "RoleBinding")])
    configs = {s: await token_kubeconfig(testbed.kubeconfig, ns, f"gw-aigc-gateway-{s}", tmp_path / f"{s}.kc")
               for s in SERVICES}
    gss = load_sample("stable-diffusion-cpu", testbed.domain, ns, rename="rbac-probe")

    template = await _kube(configs["template"])
    try:
        await template.create(GSS, ns, gss, dry_run=True)
        created = await template.create(GSS, ns, gss)
        assert created["metadata"]["name"] == "rbac-probe"
        assert [g["metadata"]["name"] for g in (await template.list(GSS, ns))["items"]] == ["rbac-probe"]
        await template.list(POD, ns)
        with pytest.raises(GatewayError, match="403"):
            await template.delete(POD, ns, "rbac-probe-0")
    finally:
        await template.close()

    instance = await _kube(configs["instance"])
    try:
        for attempt in range(10):  # kruise-game writes the object too: resourceVersion-checked, retried
            current = await instance.get(GSS, ns, "rbac-probe")
            current["spec"]["reserveGameServerIds"] = [0]
            try:
                replaced = await instance.replace(GSS, ns, current)
                break
            except Aborted:
                await asyncio.sleep(0.2 * attempt)
        assert replaced["spec"]["reserveGameServerIds"] == [0]
        with pytest.raises(GatewayError, match="403"):
            await instance.create(GSS, ns, {**gss, "metadata": {**gss["metadata"], "name": "not-mine"}})
    finally:
        await instance.close()

    auth = await _kube(configs["auth"])
    try:
        assert (await auth.list(GSS, ns))["items"][0]["metadata"]["name"] == "rbac-probe"
        async for _event in auth.watch(GSS, ns, timeout_seconds=1):
            break
        with pytest.raises(GatewayError, match="403"):
            await auth.get(POD, ns, "rbac-probe-0")
    finally:
        await auth.close()

    usersync = await _kube(configs["usersync"])
    try:
        assert (await usersync.get(GSS, ns, "rbac-probe"))["metadata"]["name"] == "rbac-probe"
        await usersync.list(PVC, ns)
        with pytest.raises(GatewayError, match="403"):
            await usersync.delete(PVC, ns, "user-data-rbac-probe-0")
    finally:
        await usersync.close()

    template = await _kube(configs["template"])
    try:
        assert await template.delete(GSS, ns, "rbac-probe")
    finally:
        await template.close()
