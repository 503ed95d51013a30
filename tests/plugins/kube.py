"""Async Kubernetes helpers for tests (kubernetes_asyncio). Create clients inside each test."""

from __future__ import annotations

import asyncio
import copy
import inspect
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import yaml
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "deploy" / "samples"

GROUP, VERSION = "game.kruise.io", "v1alpha1"


@asynccontextmanager
async def api_client(kubeconfig: Path) -> AsyncIterator[client.ApiClient]:
    api = await config.new_client_from_config(config_file=str(kubeconfig))
    async with api:
        yield api


def load_sample(name: str, domain: str, namespace: str, rename: str | None = None) -> dict:
    """A sample template from deploy/samples with ${DOMAIN} filled in, placed in `namespace`."""
    text = (SAMPLES / f"{name}.yaml").read_text().replace("${DOMAIN}", domain)
    obj = yaml.safe_load(text)
    obj["metadata"]["namespace"] = namespace
    if rename:
        obj["metadata"]["name"] = rename
    return obj


async def wait_for(predicate: Callable[[], Any], timeout: float = 60, interval: float = 0.5,
                   what: str = "condition") -> Any:
    """Poll `predicate` (sync or async) until it returns something truthy and return that.
    On timeout, fail with the last value (or error) seen, which usually explains why."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = predicate()
            if inspect.isawaitable(last):
                last = await last
            if last:
                return last
        except ApiException as exc:
            last = f"ApiException {exc.status}: {exc.reason}"
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value: {last!r}")
        await asyncio.sleep(interval)


class Game:
    """GameServerSet / GameServer access in one namespace."""

    def __init__(self, api: client.ApiClient, namespace: str):
        self.namespace = namespace
        self.custom = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)
        self.net = client.NetworkingV1Api(api)

    async def create_gss(self, obj: dict) -> dict:
        return await self.custom.create_namespaced_custom_object(
            GROUP, VERSION, self.namespace, "gameserversets", obj)

    async def get_gss(self, name: str) -> dict:
        return await self.custom.get_namespaced_custom_object(
            GROUP, VERSION, self.namespace, "gameserversets", name)

    async def update_gss(self, name: str, mutate: Callable[[dict], None], attempts: int = 10) -> dict:
        """Read, mutate the spec, replace with the resourceVersion read; retry on 409 (the controller
        writes reserveGameServerIds concurrently)."""
        return await self.update_object(name, lambda gss: mutate(gss["spec"]), attempts)

    async def update_object(self, name: str, mutate: Callable[[dict], None], attempts: int = 10) -> dict:
        """:meth:`update_gss` with the whole object given to ``mutate`` (its annotations, say)."""
        for _ in range(attempts):
            gss = await self.get_gss(name)
            new = copy.deepcopy(gss)
            mutate(new)
            try:
                return await self.custom.replace_namespaced_custom_object(
                    GROUP, VERSION, self.namespace, "gameserversets", name, new)
            except ApiException as exc:
                if exc.status != 409:
                    raise
                await asyncio.sleep(0.2)
        raise AssertionError(f"could not update GameServerSet {name}: conflicts persisted")

    async def delete_gss(self, name: str) -> None:
        await self.custom.delete_namespaced_custom_object(
            GROUP, VERSION, self.namespace, "gameserversets", name)

    async def game_servers(self, gss: str) -> dict[int, dict]:
        """GameServers of one GameServerSet by id."""
        items = (await self.custom.list_namespaced_custom_object(
            GROUP, VERSION, self.namespace, "gameservers",
            label_selector=f"game.kruise.io/owner-gss={gss}"))["items"]
        return {int(gs["metadata"]["name"].rsplit("-", 1)[1]): gs for gs in items}

    async def pods(self, gss: str) -> dict[int, client.V1Pod]:
        """Pods of one GameServerSet by id (excluding those already being deleted)."""
        items = (await self.core.list_namespaced_pod(
            self.namespace, label_selector=f"game.kruise.io/owner-gss={gss}")).items
        return {int(p.metadata.name.rsplit("-", 1)[1]): p for p in items
                if p.metadata.deletion_timestamp is None}

    async def running_ids(self, gss: str) -> set[int]:
        return {i for i, p in (await self.pods(gss)).items() if p.status.phase == "Running"}

    async def pvcs(self) -> dict[str, client.V1PersistentVolumeClaim]:
        items = (await self.core.list_namespaced_persistent_volume_claim(self.namespace)).items
        return {p.metadata.name: p for p in items}

    async def act_as_kubelet(self, gss: str, i: int, image: str) -> None:
        """What a kubelet reports once it restarted pod ``i``'s container on ``image`` after an in-place update
        (kwok never does: tests/okg/test_update_facts.py): the image in the container status, Ready True. Read,
        modify, replace with the resourceVersion read; again on 409 (the controllers write the pod too)."""
        for _ in range(20):
            pod = await self.core.read_namespaced_pod(f"{gss}-{i}", self.namespace)
            status = copy.deepcopy(pod.status)
            status.container_statuses[0].image = image
            for c in status.conditions:
                if c.type == "Ready":
                    c.status, c.reason, c.message = "True", None, None
            pod.status = status
            try:
                await self.core.replace_namespaced_pod_status(pod.metadata.name, self.namespace, pod)
                return
            except ApiException as exc:
                if exc.status != 409:
                    raise
        raise AssertionError(f"could not write pod {i}'s status: conflicts persisted")

    async def wait_running(self, gss: str, ids: set[int], timeout: float = 90) -> dict[int, client.V1Pod]:
        """Until exactly `ids` have pods and all are Running."""
        seen: dict[int, str] = {}

        async def check() -> dict[int, client.V1Pod] | None:
            pods = await self.pods(gss)
            seen.clear()
            seen.update({i: p.status.phase for i, p in pods.items()})
            if set(pods) == ids and all(p.status.phase == "Running" for p in pods.values()):
                return pods
            return None
        try:
            return await wait_for(check, timeout, what=f"pods of {gss} to be exactly {sorted(ids)} Running")
        except AssertionError as exc:  # say what was there instead
            obj = await self.custom.get_namespaced_custom_object("game.kruise.io", "v1alpha1", self.namespace,
                                                                 "gameserversets", gss)
            spec = {k: obj["spec"].get(k) for k in ("replicas", "reserveGameServerIds")}
            raise AssertionError(f"{exc}; pods by id: {dict(sorted(seen.items()))}; GameServerSet {spec}, "
                                 f"status {obj.get('status')}") from None


def _gss_line(kind: str, obj: dict) -> str:
    meta, spec, status = obj.get("metadata") or {}, obj.get("spec") or {}, obj.get("status") or {}
    fields = meta.get("managedFields") or []
    last = max(fields, key=lambda f: f.get("time") or "", default={})
    reserve = (meta.get("annotations") or {}).get("game.kruise.io/reserve-ids", "")  # what the controller applied
    return (f"{kind} rv={meta.get('resourceVersion')} gen={meta.get('generation')}/"
            f"{status.get('observedGeneration')} R={spec.get('replicas')} X={spec.get('reserveGameServerIds')} "
            f"applied={reserve!r} status.replicas={status.get('replicas')} by={last.get('manager')}"
            f"/{last.get('operation')}/{last.get('subresource', '')}")


@asynccontextmanager
async def gss_history(kubeconfig: Path, namespace: str, name: str) -> AsyncIterator[list[str]]:
    """Every version of one GameServerSet seen while the block runs, a line each (who wrote it, R, X, what
    the controller applied): printed by tests whose allocator invariants fail, to tell whose write broke them."""
    from kubernetes_asyncio import watch

    lines: list[str] = []

    async def follow() -> None:
        async with api_client(kubeconfig) as api:
            custom = client.CustomObjectsApi(api)
            stream = watch.Watch().stream(custom.list_namespaced_custom_object, GROUP, VERSION, namespace,
                                          "gameserversets", field_selector=f"metadata.name={name}",
                                          timeout_seconds=3600)
            async for event in stream:
                lines.append(_gss_line(event["type"], event["object"]))

    task = asyncio.create_task(follow())
    try:
        yield lines
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
