"""GetTemplate's live fallback on the test bed: a template made around the service (kubectl, another replica)
is found by GetTemplate at once, even while the watch has not delivered it (ListTemplates waits for the watch)."""
from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from aigc_gateway.config import KubernetesConfig
from aigc_gateway.errors import NotFound
from aigc_gateway.kube import KubeHandle
from aigc_gateway.services.template.cluster import TemplateCluster
from aigc_gateway.services.template.policy import Policy

from ..plugins.kube import Game, api_client
from .conftest import TEMPLATE_LABELS
from .samples import sample

if TYPE_CHECKING:
    from ..plugins.testbed import Testbed

pytestmark = pytest.mark.testbed


async def test_get_finds_a_template_the_watch_has_not_delivered(testbed: Testbed, k8s_namespace: str) -> None:
    handle = KubeHandle(KubernetesConfig(kubeconfig=str(testbed.kubeconfig)))
    cluster = TemplateCluster(handle, Policy(namespaces=(k8s_namespace,), domain=testbed.domain,
                                             gss_labels=TEMPLATE_LABELS))
    try:
        assert await cluster.list(k8s_namespace) == []  # the cache has listed...
        await cluster.cache.close()  # ...and its watch is stopped: only the live fallback can find a new template
        obj = sample(namespace=k8s_namespace, rename="made-by-kubectl", domain=testbed.domain)
        obj["metadata"]["labels"] = dict(TEMPLATE_LABELS)
        unlabelled = sample(namespace=k8s_namespace, rename="not-a-template", domain=testbed.domain)
        async with api_client(testbed.kubeconfig) as client:
            created = await Game(client, k8s_namespace).create_gss(obj)
            await Game(client, k8s_namespace).create_gss(unlabelled)

        got = await cluster.read(k8s_namespace, "made-by-kubectl")
        assert got["metadata"]["uid"] == created["metadata"]["uid"]
        # What the GET found is now cached: the list shows it although no watch event came.
        assert [o["metadata"]["name"] for o in await cluster.list(k8s_namespace)] == ["made-by-kubectl"]
        for missing in ("not-a-template", "no-such-template"):
            with pytest.raises(NotFound):
                await cluster.read(k8s_namespace, missing)
    finally:
        await cluster.cache.close()
        await handle.close()
