"""aigc_gateway.kube.KubeHandle: every service's one lazy Kubernetes client (against the test bed's apiserver)."""
from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from aigc_gateway.config import KubernetesConfig
from aigc_gateway.errors import Unavailable
from aigc_gateway.kube import NAMESPACE, Kube, KubeHandle

from ..plugins.testbed import Testbed

pytestmark = pytest.mark.testbed


async def test_a_handle_connects_on_first_use_and_shares_one_client(testbed: Testbed) -> None:
    handle = KubeHandle(KubernetesConfig(kubeconfig=str(testbed.kubeconfig)))
    assert handle.connected is None  # made without touching the cluster
    first, second = await asyncio.gather(handle.get(), handle.get())
    assert first is second is handle.connected
    assert (await first.list(NAMESPACE)).get("items")
    await handle.close()
    assert handle.connected is None


async def test_without_a_usable_kubeconfig_get_is_unavailable_until_there_is_one(testbed: Testbed,
                                                                                  tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    handle = KubeHandle(KubernetesConfig(kubeconfig=str(kubeconfig)))
    with pytest.raises(Unavailable) as refused:
        await handle.get()
    assert refused.value.reason == "KUBERNETES_UNAVAILABLE" and handle.connected is None
    kubeconfig.write_text(testbed.kubeconfig.read_text())  # the kubeconfig gets mounted
    try:
        assert (await (await handle.get()).list(NAMESPACE)).get("items")
    finally:
        await handle.close()


async def test_a_handle_never_closes_a_client_it_was_given(testbed: Testbed) -> None:
    given = await Kube.connect(KubernetesConfig(kubeconfig=str(testbed.kubeconfig)))
    handle = KubeHandle(KubernetesConfig(), given)
    try:
        assert await handle.get() is given
        await handle.close()
        assert (await given.list(NAMESPACE)).get("items")  # still usable: its owner closes it
    finally:
        await given.close()
