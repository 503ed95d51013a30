"""What the service adds to a manifest before it is checked and written, and says so in warnings.

- the namespace from the request when the manifest has none;
- the configured gss_labels, so the new GameServerSet is listed as a template;
- `replicas: 0` when a new template leaves it out;
- the ingress auth annotations (`auth-url`, `auth-signin`) from configuration when missing, and
  `rh=$host` (the host the proxy routed on, which the auth service requires) on an auth-url that
  lacks it, so templates published before it are upgraded by their next update;
- `proxy-buffer-size: 16k` when the template does not say (the auth answer carries the instance's cookies;
  :data:`.policy.PROXY_BUFFER_SIZE`);
- `auth-response-headers` naming at least the identity headers and `Cookie` (added, or merged into one
  that names others): a header it does not name passes from the client to the instance unchanged, so
  without it a client's own `X-Auth-Request-User` would reach the instance, and without `Cookie` the
  gateway's session cookie of whoever opens it (docs/auth.md);
- the in-place update hook `spec.lifecycle.inPlaceUpdate.labelsHandler` naming the gateway's hold label
  (:data:`aigc_gateway.upgrades.HOLD_LABEL`), merged into the admin's own hooks: the instance service's rollout
  parks a busy instance's pod with that label (docs/upgrade.md, fact 8). Every create and update writes it, so it
  travels with every pod-template change (kruise-game copies `spec.lifecycle` to the workload only then);
- fields only the apiserver sets (`status`, `metadata.uid`, `resourceVersion`…) are dropped from a
  create, so `kubectl get -o yaml` output can be published elsewhere.

Everything else, including fields this service does not know, is kept as given. Pure.
"""
from __future__ import annotations

import copy
from typing import Any

from aigc_gateway import okg, upgrades
from aigc_gateway.errors import Violation

from . import network
from .policy import (
    AUTH_RESPONSE_HEADERS,
    AUTH_RESPONSE_HEADERS_ANNOTATION,
    AUTH_SIGNIN_ANNOTATION,
    AUTH_URL_ANNOTATION,
    COOKIE_HEADER,
    PROXY_BUFFER_SIZE,
    PROXY_BUFFER_SIZE_ANNOTATION,
    Policy,
)

HOOK_PATH = "spec.lifecycle.inPlaceUpdate.labelsHandler"
SERVER_METADATA = ("uid", "resourceVersion", "creationTimestamp", "generation", "managedFields", "selfLink",
                   "deletionTimestamp", "deletionGracePeriodSeconds", "ownerReferences", "finalizers")


def normalize(obj: dict[str, Any], policy: Policy, namespace: str, *, create: bool) -> tuple[dict[str, Any],
                                                                                            list[Violation]]:
    """A normalised copy of ``obj`` and the warnings that tell what was added or dropped."""
    obj = copy.deepcopy(obj)
    warnings: list[Violation] = []
    meta = obj.get("metadata")
    if meta is None:
        meta = obj["metadata"] = {}
    if not isinstance(meta, dict):
        return obj, warnings
    if create:
        dropped = [k for k in SERVER_METADATA if k in meta] + (["status"] if "status" in obj else [])
        for key in dropped:
            (obj if key == "status" else meta).pop(key, None)
        if dropped:
            warnings.append(Violation("metadata", f"fields set by the apiserver were ignored: {', '.join(dropped)}",
                                      "SERVER_FIELDS_IGNORED"))
    if not meta.get("namespace") and namespace and namespace != "-":
        meta["namespace"] = namespace
    _add_labels(meta, policy, warnings)
    spec = obj.get("spec")
    if isinstance(spec, dict):
        if create and "replicas" not in spec:
            spec["replicas"] = 0
            warnings.append(Violation("spec.replicas", "set to 0: a published template has no instances until "
                                      "users install it", "REPLICAS_DEFAULTED"))
        _add_auth_annotations(obj, policy, warnings)
        _add_hold_hook(spec, warnings)
    return obj, warnings


def _add_hold_hook(spec: dict[str, Any], warnings: list[Violation]) -> None:
    """The hold label in the in-place update hook, beside whatever hooks the admin wrote. A level that is not a
    mapping is left as it is: the rules refuse it (INVALID_LIFECYCLE)."""
    labels: Any = spec
    for key in ("lifecycle", "inPlaceUpdate", "labelsHandler"):
        if labels.get(key) is None:
            labels[key] = {}
        labels = labels[key]
        if not isinstance(labels, dict):
            return
    if labels.get(upgrades.HOLD_LABEL) == "true":
        return
    was = labels.get(upgrades.HOLD_LABEL)
    labels[upgrades.HOLD_LABEL] = "true"
    warnings.append(Violation(
        f"{HOOK_PATH}[{upgrades.HOLD_LABEL}]",
        "added the gateway's in-place update hook: a rollout holds a busy instance's pod with this label"
        + (f" (the manifest had {was!r}, which the gateway's rollout would not read as a hold)" if was is not None
           else ""), "UPDATE_HOLD_HOOK_ADDED"))


def _add_labels(meta: dict[str, Any], policy: Policy, warnings: list[Violation]) -> None:
    if not policy.gss_labels:
        return
    labels = meta.get("labels")
    if labels is None:
        labels = meta["labels"] = {}
    if not isinstance(labels, dict):
        return
    added = {k: v for k, v in policy.gss_labels.items() if k not in labels}
    labels.update(added)
    if added:
        warnings.append(Violation("metadata.labels", "added the configured gss_labels so the template is listed: "
                                  + ", ".join(f"{k}={v}" for k, v in sorted(added.items())), "LABELS_ADDED"))


def _add_auth_annotations(obj: dict[str, Any], policy: Policy, warnings: list[Violation]) -> None:
    net = obj["spec"].get("network")
    if not isinstance(net, dict) or net.get("networkType") != okg.INGRESS_NETWORK:
        return
    conf = net.get("networkConf")
    if conf is None:
        conf = net["networkConf"] = []
    if not isinstance(conf, list):
        return
    for entry in conf:
        pair = network.split_annotation(str(entry.get("value") or "")) if isinstance(entry, dict) and \
            entry.get("name") == "Annotation" else None
        if pair and pair[0] == AUTH_URL_ANNOTATION and not network.has_routed_host(pair[1]):
            upgraded = network.with_routed_host(pair[1])
            entry["value"] = f"{AUTH_URL_ANNOTATION}: {upgraded}"
            warnings.append(Violation(network.conf_path("Annotation", AUTH_URL_ANNOTATION),
                                      f"added rh=$host (the host the proxy routed on, which the gateway's check "
                                      f"requires): {upgraded}", "AUTH_URL_ROUTED_HOST_ADDED"))
        elif pair and pair[0] == AUTH_RESPONSE_HEADERS_ANNOTATION:
            merged = network.with_headers(pair[1], AUTH_RESPONSE_HEADERS)
            if merged != pair[1]:
                entry["value"] = f"{AUTH_RESPONSE_HEADERS_ANNOTATION}: {merged}"
                warnings.append(_identity_warning(merged, network.missing_headers(pair[1], AUTH_RESPONSE_HEADERS)))
    present = network.annotations_by_key(obj)
    for key, value in ((AUTH_URL_ANNOTATION, policy.auth_url), (AUTH_SIGNIN_ANNOTATION, policy.auth_signin_url)):
        if key not in present:
            conf.append({"name": "Annotation", "value": f"{key}: {value}"})
            warnings.append(Violation(network.conf_path("Annotation", key), f"added from configuration: {value}",
                                      "AUTH_ANNOTATION_ADDED"))
    if AUTH_RESPONSE_HEADERS_ANNOTATION not in present:
        value = ",".join(AUTH_RESPONSE_HEADERS)
        conf.append({"name": "Annotation", "value": f"{AUTH_RESPONSE_HEADERS_ANNOTATION}: {value}"})
        warnings.append(_identity_warning(value, list(AUTH_RESPONSE_HEADERS)))
    if PROXY_BUFFER_SIZE_ANNOTATION not in present:
        conf.append({"name": "Annotation", "value": f"{PROXY_BUFFER_SIZE_ANNOTATION}: {PROXY_BUFFER_SIZE}"})
        warnings.append(Violation(network.conf_path("Annotation", PROXY_BUFFER_SIZE_ANNOTATION),
                                  f"added {PROXY_BUFFER_SIZE}: ingress-nginx holds the gateway's answer, the "
                                  "instance's own cookies included, in this buffer (4k by default: larger cookies "
                                  "made the owner's requests fail with 500)", "PROXY_BUFFER_SIZE_ADDED"))


def _identity_warning(value: str, added: list[str]) -> Violation:
    why = []
    if any(h.lower() != COOKIE_HEADER.lower() for h in added):
        why.append("the proxy now copies the gateway's identity headers to the instance, replacing any a client "
                   "sent (without them a client's own X-Auth-Request-User reaches the instance)")
    if any(h.lower() == COOKIE_HEADER.lower() for h in added):
        why.append("the instance now gets the client's cookies without the gateway's own (without Cookie named, "
                   "the session cookie of whoever opens the instance reaches its code)")
    return Violation(network.conf_path("Annotation", AUTH_RESPONSE_HEADERS_ANNOTATION),
                     f"added {', '.join(added)}: {'; '.join(why)}: {value}", "AUTH_RESPONSE_HEADERS_ADDED")
