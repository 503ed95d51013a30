"""Kubernetes credentials of the chart's ServiceAccounts on the test bed: the rendered RBAC
applied for real, a short-lived token per account, and a kubeconfig holding that token."""
from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml
from kubernetes_asyncio import client

from tests.plugins.kube import api_client


def apply(kubectl: str, kubeconfig: Path, objects: list[dict[str, Any]], *, dry_run: bool = False) -> str:
    """kubectl apply (server side dry run when asked) of objects; returns kubectl's output."""
    args = [kubectl, "--kubeconfig", str(kubeconfig), "apply", "-f", "-"]
    if dry_run:
        args.append("--dry-run=server")
    result = subprocess.run(args, input=yaml.safe_dump_all(objects), capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, f"kubectl apply{' --dry-run=server' if dry_run else ''} refused:\n{result.stderr}"
    return result.stdout


async def token_kubeconfig(admin: Path, namespace: str, account: str, dest: Path) -> Path:
    """A kubeconfig for ServiceAccount `namespace/account` with a fresh bound token (1 hour)."""
    async with api_client(admin) as api:
        request = client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(
            audiences=[], expiration_seconds=3600))
        reply = await client.CoreV1Api(api).create_namespaced_service_account_token(account, namespace, request)
        token = reply.status.token
    cfg = yaml.safe_load(admin.read_text())
    cluster = cfg["clusters"][0]["cluster"]
    dest.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "sa",
        "clusters": [{"name": "bed", "cluster": cluster}],
        "users": [{"name": account, "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "bed", "user": account, "namespace": namespace}}],
    }))
    dest.chmod(0o600)
    return dest


async def allowed(kubeconfig: Path, namespace: str, group: str, resource: str, verb: str) -> bool:
    """SelfSubjectAccessReview as the kubeconfig's user."""
    async with api_client(kubeconfig) as api:
        review = client.V1SelfSubjectAccessReview(spec=client.V1SelfSubjectAccessReviewSpec(
            resource_attributes=client.V1ResourceAttributes(namespace=namespace, group=group, resource=resource,
                                                            verb=verb)))
        reply = await client.AuthorizationV1Api(api).create_self_subject_access_review(review)
        return bool(reply.status.allowed)
