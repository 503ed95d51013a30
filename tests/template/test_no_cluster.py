"""Without a reachable cluster (scripts/dev --no-testbed, a kubeconfig not mounted, an apiserver that is
down) the catalog answers UNAVAILABLE, retryable, saying the cluster is not reachable: never INTERNAL."""
from __future__ import annotations

import grpc
import pytest

from aigc_gateway.api.v1 import template_pb2

from ..plugins.gateway import free_port

DOWN_KUBECONFIG = """apiVersion: v1
kind: Config
clusters: [{{name: down, cluster: {{server: "https://127.0.0.1:{port}", insecure-skip-tls-verify: true}}}}]
users: [{{name: u, user: {{token: not-a-secret}}}}]
contexts: [{{name: down, context: {{cluster: down, user: u}}}}]
current-context: down
"""


@pytest.fixture(params=["missing-kubeconfig", "nothing-listens"])
def kubeconfig(request, tmp_path) -> tuple[str, str]:
    """(the kubeconfig path, what the message must say about it)."""
    if request.param == "missing-kubeconfig":
        path = tmp_path / "absent" / "kubeconfig"
        return str(path), f"{path}: the file does not exist"
    port = free_port()  # bound, then closed: nothing listens there
    path = tmp_path / "kubeconfig"
    path.write_text(DOWN_KUBECONFIG.format(port=port))
    return str(path), f"127.0.0.1:{port}"


async def test_catalog_reads_answer_unavailable_when_the_cluster_is_not_reachable(template_api, kubeconfig) -> None:
    path, detail = kubeconfig
    api = await template_api("team-a", kubeconfig=path)
    for who in (api.user, api.admin):
        for call, request in ((api.stub.ListTemplates, template_pb2.ListTemplatesRequest(parent=api.parent)),
                              (api.stub.ListTemplates, template_pb2.ListTemplatesRequest(parent="namespaces/-")),
                              (api.stub.GetTemplate, template_pb2.GetTemplateRequest(name=api.name("sd")))):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call(request, metadata=who)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value.details()
            assert err.value.details().startswith("the Kubernetes cluster is not reachable"), err.value.details()
            assert detail in err.value.details()
