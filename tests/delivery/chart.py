"""Rendering the Helm chart, and what the services' code asks of the Kubernetes API."""
from __future__ import annotations

import ast
import subprocess
from pathlib import Path
from typing import Any

import yaml

from .conftest import REPO

CHART = REPO / "deploy" / "helm" / "aigc-gateway"
SAMPLE_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
SERVICES = ("template", "instance", "auth", "usersync")

# aigc_gateway.kube Kind constants -> (API group, resource)
KINDS = {
    "GSS": ("game.kruise.io", "gameserversets"), "GAMESERVER": ("game.kruise.io", "gameservers"),
    "POD": ("", "pods"), "PVC": ("", "persistentvolumeclaims"), "EVENT": ("", "events"),
    "SERVICE": ("", "services"), "NAMESPACE": ("", "namespaces"), "INGRESS": ("networking.k8s.io", "ingresses"),
}
# Kube method -> RBAC verb
VERBS = {"get": "get", "list": "list", "watch": "watch", "create": "create", "replace": "update",
         "patch": "patch", "delete": "delete"}


def render(helm: Path, namespace: str, *values_files: Path, release: str = "gw", **sets: str) -> list[dict[str, Any]]:
    args = [str(helm), "template", release, str(CHART), "--namespace", namespace]
    for f in values_files:
        args += ["-f", str(f)]
    for key, value in sets.items():
        args += ["--set-json", f"{key}={value}"]
    result = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def rules_of(objects: list[dict[str, Any]], component: str) -> set[tuple[str, str, str]]:
    """(group, resource, verb) granted to a component's Role or ClusterRole."""
    granted = set()
    for obj in objects:
        labels = obj["metadata"].get("labels", {})
        if obj["kind"] in ("Role", "ClusterRole") and labels.get("app.kubernetes.io/component") == component:
            for rule in obj["rules"]:
                granted |= {(g, r, v) for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
    return granted


def _kind_name(node: ast.expr, kinds: dict[str, tuple[str, str]]) -> str | None:
    if isinstance(node, ast.Name) and node.id in kinds:
        return node.id
    if isinstance(node, ast.Attribute) and node.attr in kinds:
        return node.attr
    return None


def _local_kinds(tree: ast.Module) -> dict[str, tuple[str, str]]:
    """Kinds a service defines itself: `NAME = kube.Kind("group", "version", "plural", "Kind")`."""
    found = {}
    for node in tree.body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
                and isinstance(node.value, ast.Call) and getattr(node.value.func, "attr",
                                                                 getattr(node.value.func, "id", "")) == "Kind"
                and len(node.value.args) >= 3 and all(isinstance(a, ast.Constant) for a in node.value.args[:3])):
            found[node.targets[0].id] = (node.value.args[0].value, node.value.args[2].value)
    return found


def kube_calls(service: str) -> tuple[set[tuple[str, str, str]], list[str]]:
    """What services/<service>/*.py asks the Kubernetes API, read from the code: calls of the core
    Kube helpers with a Kind constant, and informers (list + watch). Calls whose kind is a variable
    cannot be read statically; they are returned as source locations."""
    calls: set[tuple[str, str, str]] = set()
    dynamic: list[str] = []
    trees = {path: ast.parse(path.read_text()) for path in sorted((REPO / "services" / service).glob("*.py"))}
    kinds = dict(KINDS)
    for tree in trees.values():
        kinds.update(_local_kinds(tree))
    for path, tree in trees.items():
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call) or not node.args:
                continue
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            if name == "Informer" and len(node.args) >= 2:
                kind = _kind_name(node.args[1], kinds)
                if kind:
                    calls |= {(*kinds[kind], "list"), (*kinds[kind], "watch")}
                continue
            if name not in VERBS or not isinstance(func, ast.Attribute):
                continue
            kind = _kind_name(node.args[0], kinds)
            if kind:
                calls.add((*kinds[kind], VERBS[name]))
            elif isinstance(node.args[0], ast.Name) and node.args[0].id == "kind":
                dynamic.append(f"{path.relative_to(REPO)}:{node.lineno} {name}(kind, ...)")
    return calls, dynamic
