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
    "ADVANCED_STATEFULSET": ("apps.kruise.io", "statefulsets"),
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


def kube_calls(service: str) -> tuple[set[tuple[str, str, str]], dict[str, set[tuple[str, str, str]]]]:
    """What services/<service>/*.py asks the Kubernetes API, read from the code: calls of the core
    Kube helpers with a Kind constant, and informers (list + watch). A call whose kind is the
    parameter ``kind`` of its function is resolved through that function: its default and the Kind
    constants its callers pass (positionally, by keyword, or from a loop over a tuple of Kinds);
    returned by source location, with what it resolved to (empty: it could not be resolved)."""
    calls: set[tuple[str, str, str]] = set()
    dynamic: dict[str, set[tuple[str, str, str]]] = {}
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
            if name in ("Informer", "ListWatch") and len(node.args) >= 2:  # the core's list+watch (informer.py)
                kind = _kind_name(node.args[1], kinds)
                if kind:
                    calls |= {(*kinds[kind], "list"), (*kinds[kind], "watch")}
                elif isinstance(node.args[1], ast.Name) and node.args[1].id == "kind":
                    where = f"{path.relative_to(REPO)}:{node.lineno} {name}(..., kind, ...)"
                    dynamic[where] = {(*kinds[k], verb) for k in _kinds_of_parameter(trees, node, kinds)
                                      for verb in ("list", "watch")}
                continue
            if name not in VERBS or not isinstance(func, ast.Attribute):
                continue
            kind = _kind_name(node.args[0], kinds)
            if kind:
                calls.add((*kinds[kind], VERBS[name]))
            elif isinstance(node.args[0], ast.Name) and node.args[0].id == "kind":
                where = f"{path.relative_to(REPO)}:{node.lineno} {name}(kind, ...)"
                dynamic[where] = {(*kinds[k], VERBS[name]) for k in _kinds_of_parameter(trees, node, kinds)}
    return calls, dynamic


def _enclosing_function(tree: ast.Module, target: ast.AST) -> ast.FunctionDef | ast.AsyncFunctionDef | None:
    found = None
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node is not target \
                and any(n is target for n in ast.walk(node)) \
                and (found is None or any(n is node for n in ast.walk(found))):
            found = node  # the innermost one
    return found


def _kinds_of_parameter(trees: dict[Path, ast.Module], call: ast.Call, kinds: dict[str, tuple[str, str]]) -> set[str]:
    """The Kind constants the parameter ``kind`` of the function around ``call`` is given anywhere."""
    tree = next(t for t in trees.values() if any(n is call for n in ast.walk(t)))
    function = _enclosing_function(tree, call)
    if function is None:
        return set()
    params = [a.arg for a in function.args.args if a.arg != "self"]
    if "kind" not in params:
        return set()
    index = params.index("kind")
    found: set[str] = set()
    defaults = function.args.defaults
    offset = len(function.args.args) - len(defaults)
    for arg, default in zip(function.args.args[offset:], defaults, strict=True):
        if arg.arg == "kind" and _kind_name(default, kinds):
            found.add(_kind_name(default, kinds))
    # A function nested in another is called by its bare name, in its own module only; a method by attribute.
    nested = _enclosing_function(tree, function) is not None
    for other in [tree] if nested else list(trees.values()):
        loops = _kind_loops(other, kinds)
        for node in ast.walk(other):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            if nested:
                called = func.id if isinstance(func, ast.Name) else ""
            else:
                called = func.attr if isinstance(func, ast.Attribute) else ""
            if called != function.name:
                continue
            given = [kw.value for kw in node.keywords if kw.arg == "kind"]
            given += node.args[index:index + 1]
            for value in given:
                if _kind_name(value, kinds):
                    found.add(_kind_name(value, kinds))
                elif isinstance(value, ast.Name):
                    found |= loops.get(value.id, set())
    return found


def _kind_loops(tree: ast.Module, kinds: dict[str, tuple[str, str]]) -> dict[str, set[str]]:
    """Names bound by `for x in (KIND_A, KIND_B)` (statements and comprehensions) -> those Kinds."""
    out: dict[str, set[str]] = {}
    for node in ast.walk(tree):
        if isinstance(node, (ast.For, ast.comprehension)) and isinstance(node.target, ast.Name) \
                and isinstance(node.iter, (ast.Tuple, ast.List)):
            names = {_kind_name(e, kinds) for e in node.iter.elts}
            if names and None not in names:
                out.setdefault(node.target.id, set()).update(n for n in names if n)
    return out
