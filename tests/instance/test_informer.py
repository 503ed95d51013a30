"""The watch cache: list, watch, and a re-list after 410 Gone that reports what changed meanwhile."""
from __future__ import annotations

import asyncio

import pytest

from aigc_gateway.config import KubernetesConfig
from aigc_gateway.kube import SERVICE, Kube
from aigc_gateway.services.instance.informer import Informer

from ..plugins.kube import wait_for
from ..plugins.testbed import Testbed

pytestmark = pytest.mark.testbed


def service(name: str) -> dict:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
            "spec": {"ports": [{"port": 80}], "clusterIP": "None"}}


async def test_informer_watches_and_relists_after_gone(testbed: Testbed, k8s_namespace: str) -> None:
    kube = await Kube.connect(KubernetesConfig(kubeconfig=str(testbed.kubeconfig)))
    seen: list[tuple[str, str]] = []
    informer = Informer(kube, SERVICE, k8s_namespace)
    informer.listeners.append(lambda kind, obj: seen.append((kind, obj["metadata"]["name"])))
    try:
        await kube.create(SERVICE, k8s_namespace, service("a"))
        task = asyncio.create_task(informer.run())
        await asyncio.wait_for(informer.synced.wait(), 30)
        assert informer.get(k8s_namespace, "a") is not None and ("ADDED", "a") in seen

        await kube.create(SERVICE, k8s_namespace, service("b"))
        await wait_for(lambda: informer.get(k8s_namespace, "b") is not None, 30, what="b seen by the watch")
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

        # A version long gone from the apiserver's watch cache: 410, and the informer asks for a re-list.
        assert await informer._watch("1") == ""
        # Changes made while nobody watched come out of the re-list as events.
        await kube.delete(SERVICE, k8s_namespace, "a")
        await kube.create(SERVICE, k8s_namespace, service("c"))
        seen.clear()
        await informer._list()
        assert sorted(seen) == [("ADDED", "c"), ("DELETED", "a")]
        assert {name for _, name in informer.items} == {"b", "c"}
    finally:
        await kube.close()
