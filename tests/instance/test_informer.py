"""The core's list+watch loop and watch cache (aigc_gateway.informer): list, watch, a re-list after 410 Gone that
reports what changed meanwhile, a kind not served."""
from __future__ import annotations

import asyncio

import pytest

from aigc_gateway.background import Backoff, cancel_and_wait
from aigc_gateway.config import KubernetesConfig
from aigc_gateway.errors import NotFound
from aigc_gateway.informer import Informer, ListWatch
from aigc_gateway.kube import SERVICE, Kind, Kube

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
        assert await informer.watch_once("1") == ""
        # Changes made while nobody watched come out of the re-list as events.
        await kube.delete(SERVICE, k8s_namespace, "a")
        await kube.create(SERVICE, k8s_namespace, service("c"))
        seen.clear()
        await informer.list_once()
        assert sorted(seen) == [("ADDED", "c"), ("DELETED", "a")]
        assert {name for _, name in informer.items} == {"b", "c"}
    finally:
        await kube.close()


async def test_a_kind_not_served_lists_as_empty_and_is_looked_for_again(testbed: Testbed, k8s_namespace: str) -> None:
    """ListWatch (the core's loop): a CRD not installed yet is no templates, not a failure, when the owner says
    so (absent_kind_retry); otherwise it is a failure the owner hears of, and the loop backs off."""
    kube = await Kube.connect(KubernetesConfig(kubeconfig=str(testbed.kubeconfig)))
    missing = Kind("nothing.example.com", "v1", "widgets", "Widget")
    lists: list[tuple[int, str]] = []
    errors: list[Exception] = []
    tolerant = ListWatch(kube, missing, k8s_namespace, absent_kind_retry=0.05,
                         on_list=lambda items, version: lists.append((len(items), version)))
    strict = ListWatch(kube, missing, k8s_namespace, on_error=errors.append, backoff=Backoff(initial=0.05, cap=0.05))
    tasks = [asyncio.create_task(tolerant.run()), asyncio.create_task(strict.run())]
    try:
        await wait_for(lambda: len(lists) >= 2 and len(errors) >= 2, 30, what="two lists and two failures")
        assert set(lists) == {(0, "")} and tolerant.synced.is_set()
        assert all(isinstance(e, NotFound) for e in errors) and not strict.synced.is_set()
    finally:
        await cancel_and_wait(tasks)
        await kube.close()
