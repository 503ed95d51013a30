"""The rules a template must follow, checked all at once.

:func:`check` looks at a manifest (already normalised for a create or an update,
or as it is in the cluster) and returns every violation and warning with the
manifest path of the field at fault, in the apiserver's own path notation
(`spec.replicas`, `...limits[nvidia.com/gpu]`), plus the network entries by name
(`spec.network.networkConf[Host]`). Pure: no I/O.
"""
from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from aigc_gateway import accelerator, idle, okg, upgrades
from aigc_gateway.errors import Violation
from aigc_gateway.names import TEMPLATE_NAME_RULE, is_dns_label, is_namespace, is_template_name
from aigc_gateway.quantity import INT32_MAX, QuantityError, parse_quantity, plain_count

from . import network
from .policy import (
    AUTH_RESPONSE_HEADERS_ANNOTATION,
    AUTH_SIGNIN_ANNOTATION,
    AUTH_URL_ANNOTATION,
    COOKIE_HEADER,
    IDENTITY_HEADERS,
    Policy,
)

TEMPLATE = "spec.gameServerTemplate"
GPU, GPU_MEM = accelerator.GPU, accelerator.GPU_MEMORY
# The unit of each extended resource the service reads. Both are counts written as plain numbers:
# Kubernetes reads `aliyun.com/gpu-mem: 3Gi` as 3221225472 (units of GiB here), so a suffix is refused
# with a hint instead of being converted to a number nobody meant. Every count must fit the API's int32.
COUNTED_RESOURCES = {GPU: "whole GPUs", GPU_MEM: "GiB of GPU memory"}
COUNT_HINTS = {GPU: "nvidia.com/gpu counts whole GPUs as a plain number, for example 1",
               GPU_MEM: "aliyun.com/gpu-mem counts GiB of GPU memory as a plain number: write 3 for 3 GiB, not 3Gi"}
PATH_TYPES = ("Exact", "Prefix", "ImplementationSpecific")
# ingress-nginx refuses an auth-url with any other character (CVE-2025-24514 fix).
AUTH_URL_CHARS = re.compile(r"^[-._~a-zA-Z0-9/: ,?&=$]+$")
# ingress-nginx's checks of auth-response-headers (the whole value, then each name); a failure leaves the
# Ingress's auth unconfigured.
RESPONSE_HEADERS_CHARS = re.compile(r"^[A-Za-z0-9\-_, ]*$")
HEADER_NAME = re.compile(r"^[a-zA-Z\d\-_]+$")
DNS_SUBDOMAIN = re.compile(r"^(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
# Reasons that describe the dashboard entry only; they do not stop users from installing.
COSMETIC = frozenset({"INVALID_SORT_ORDER", "INVALID_ICON_URL"})


class Mode(enum.Enum):
    CREATE = "create"  # a new template: no instances yet
    UPDATE = "update"  # a change to a published template (protected fields are checked in changes.py)
    EXISTING = "existing"  # a GameServerSet as found in the cluster: is it usable?


@dataclass
class Report:
    violations: list[Violation] = field(default_factory=list)
    warnings: list[Violation] = field(default_factory=list)

    def bad(self, path: str, description: str, reason: str) -> None:
        self.violations.append(Violation(path, description, reason))

    def warn(self, path: str, description: str, reason: str) -> None:
        self.warnings.append(Violation(path, description, reason))

    @property
    def ok(self) -> bool:
        return not self.violations


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def check(obj: dict[str, Any], policy: Policy, mode: Mode, namespace: str = "") -> Report:
    """Every violation of ``obj``; ``namespace`` is the one the request names (empty: any)."""
    report = Report()
    _check_type(obj, report)
    _check_metadata(obj, policy, namespace, report)
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        report.bad("spec", "a GameServerSet needs a spec", "REQUIRED")
        return report
    _check_scaling(spec, mode, report)
    _check_network(obj, policy, mode, report)
    _check_pod_template(spec, report)
    _check_lifecycle(spec, mode, report)
    return report


def _check_lifecycle(spec: dict[str, Any], mode: Mode, report: Report) -> None:
    """kruise's lifecycle hooks must be mappings; a create or update must carry the gateway's in-place update hook
    (normalisation adds it, so only a hook it could not merge into is refused). A template found without it is
    still usable: its rollouts then rely on partition and priorities alone (docs/upgrade.md)."""
    node: Any = spec
    where = "spec"
    for key in ("lifecycle", "inPlaceUpdate", "labelsHandler"):
        node, where = node.get(key), f"{where}.{key}"
        if node is None:
            break
        if not isinstance(node, dict):
            report.bad(where, "must be a mapping (kruise's lifecycle hook)", "INVALID_LIFECYCLE")
            return
    hooked = isinstance(node, dict) and node.get(upgrades.HOLD_LABEL) == "true"
    if not hooked and mode is not Mode.EXISTING:
        report.bad(f"spec.lifecycle.inPlaceUpdate.labelsHandler[{upgrades.HOLD_LABEL}]", "the gateway's in-place "
                   "update hook is missing: a rollout could not hold a busy instance", "HOLD_HOOK_MISSING")


def _check_type(obj: dict[str, Any], report: Report) -> None:
    if obj.get("apiVersion") != okg.API_VERSION:
        report.bad("apiVersion", f"must be {okg.API_VERSION}, got {obj.get('apiVersion')!r}", "WRONG_API_VERSION")
    if obj.get("kind") != okg.GSS_KIND:
        report.bad("kind", f"must be {okg.GSS_KIND}, got {obj.get('kind')!r}", "WRONG_KIND")


def _check_metadata(obj: dict[str, Any], policy: Policy, namespace: str, report: Report) -> None:
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        report.bad("metadata", "a GameServerSet needs metadata with a name", "REQUIRED")
        return
    name = meta.get("name")
    if not name:
        report.bad("metadata.name", "the template needs a name", "REQUIRED")
    elif not is_template_name(name):
        report.bad("metadata.name", f"{name!r} is not a valid template name: {TEMPLATE_NAME_RULE}", "INVALID_NAME")
    ns = meta.get("namespace")
    if not ns:
        report.bad("metadata.namespace", "the template needs a namespace", "REQUIRED")
    elif not is_namespace(ns):
        report.bad("metadata.namespace", f"{ns!r} is not a valid namespace name", "INVALID_NAMESPACE")
    elif namespace and ns != namespace:
        report.bad("metadata.namespace", f"{ns!r} differs from the request's namespace {namespace!r}",
                   "NAMESPACE_MISMATCH")
    elif not policy.namespace_allowed(ns):
        report.bad("metadata.namespace", f"namespace {ns!r} is not one of the configured template namespaces "
                   f"({', '.join(policy.namespaces)})", "NAMESPACE_NOT_ALLOWED")
    labels = _dict(meta.get("labels"))
    for key, value in policy.gss_labels.items():
        if key in labels and labels[key] != value:
            report.bad(f"metadata.labels[{key}]", f"templates carry {key}={value} (configured gss_labels); "
                       f"{labels[key]!r} would hide this one", "LABEL_MISMATCH")
    notes = _dict(meta.get("annotations"))
    sort_key = f"{policy.annotation_prefix}sort-order"
    if sort_key in notes and not re.fullmatch(r"[+-]?\d{1,9}", str(notes[sort_key]).strip()):
        report.bad(f"metadata.annotations[{sort_key}]", f"must be an integer, got {notes[sort_key]!r}",
                   "INVALID_SORT_ORDER")
    icon_key = f"{policy.annotation_prefix}icon-url"
    if icon_key in notes:
        url = urlsplit(str(notes[icon_key]))
        if url.scheme not in ("https", "http") or not url.netloc:
            report.bad(f"metadata.annotations[{icon_key}]", "must be an absolute http(s) URL", "INVALID_ICON_URL")
    for error in idle.read(notes, policy.annotation_prefix)[1]:  # idle auto-pause (aigc_gateway.idle)
        report.bad(f"metadata.annotations[{policy.annotation_prefix}{error.key}]", str(error), error.reason)
    for key, message, reason in upgrades.annotation_errors(notes, policy.annotation_prefix):  # docs/upgrade.md
        report.bad(f"metadata.annotations[{key}]", message, reason)


def _check_scaling(spec: dict[str, Any], mode: Mode, report: Report) -> None:
    replicas = spec.get("replicas", 0)
    if not isinstance(replicas, int) or isinstance(replicas, bool) or not 0 <= replicas <= INT32_MAX:
        report.bad("spec.replicas", f"must be an integer from 0 to {INT32_MAX}, got {replicas!r}",
                   "INVALID_REPLICAS")
    elif mode is Mode.CREATE and replicas != 0:
        report.bad("spec.replicas", f"must be 0 when a template is published (instances are created per user), "
                   f"got {replicas}", "REPLICAS_NOT_ZERO")
    strategy = _dict(spec.get("scaleStrategy")).get("scaleDownStrategyType")
    if strategy != okg.RESERVE_IDS:
        # An update cannot change the scale strategy, so there it is a note, not a refusal.
        (report.warn if mode is Mode.UPDATE else report.bad)(
            "spec.scaleStrategy.scaleDownStrategyType",
            f"must be ReserveIds (a paused instance keeps its id and disk), got {strategy or 'General'!r}",
            "NOT_RESERVE_IDS")
    reserved = spec.get("reserveGameServerIds")
    if reserved in (None, []) or mode is Mode.UPDATE:  # the controller writes it; an update keeps it
        return
    if mode is Mode.CREATE:
        report.bad("spec.reserveGameServerIds", "must be empty when a template is published: the instance "
                   "service manages reserved ids", "RESERVED_IDS_ON_CREATE")
    elif not isinstance(reserved, list):
        report.bad("spec.reserveGameServerIds", "must be a list of ids or ranges like \"5-7\"", "INVALID_RESERVED_IDS")
    else:
        for i, item in enumerate(reserved):
            try:  # the instance service reads the list with the same function
                okg.parse_reserve([item])
            except okg.ReserveListError as exc:
                report.bad(f"spec.reserveGameServerIds[{i}]", f"{item!r} is neither an id >= 0 nor a range like "
                           f"\"5-7\" ({exc})", "INVALID_RESERVED_IDS")


def _check_network(obj: dict[str, Any], policy: Policy, mode: Mode, report: Report) -> None:
    spec = obj["spec"]
    if not isinstance(spec.get("network"), dict):
        report.bad("spec.network", f"templates need a {okg.INGRESS_NETWORK} network: each instance is reached through "
                   "an ingress that asks the gateway who may open it", "NETWORK_REQUIRED")
        return
    kind = network.network_type(obj)
    if kind != okg.INGRESS_NETWORK:
        report.bad("spec.network.networkType", f"must be {okg.INGRESS_NETWORK} (each instance is reached through an "
                   f"ingress that asks the gateway who may open it), got {kind!r}", "NOT_INGRESS_NETWORK")
        return
    if not isinstance(spec["network"].get("networkConf"), list):
        report.bad(network.CONF_PATH, "the ingress network needs Port, Host or Path, PathType and the auth "
                   "annotations", "REQUIRED")
        return
    _check_port(obj, report)
    _check_routes(obj, policy, report)
    _check_annotations(obj, policy, mode, report)


def _check_port(obj: dict[str, Any], report: Report) -> None:
    ports = network.values(obj, "Port")
    if not ports:
        report.bad(network.conf_path("Port"), "the ingress network needs the engine's Port", "PORT_REQUIRED")
    for value in ports:
        if not value.isdigit() or not 1 <= int(value) <= 65535:
            report.bad(network.conf_path("Port"), f"must be a port number 1-65535, got {value!r}", "INVALID_PORT")


def _check_routes(obj: dict[str, Any], policy: Policy, report: Report) -> None:
    hosts, paths = network.values(obj, "Host"), network.values(obj, "Path")
    path_types = network.values(obj, "PathType")
    if not hosts:
        # An Ingress rule without a host matches every host, and the owner check keys on hosts.
        report.bad(network.conf_path("Host"), "the ingress network needs a Host (for example "
                   "instances<id>-sd.example.com, or sd.example.com with <id> in the Path): an ingress rule "
                   "without a host answers on every host", "HOST_REQUIRED")
    if len(hosts) > 1:
        report.bad(network.conf_path("Host"), "give one Host (the plugin keeps only the last)", "DUPLICATE_HOST")
    if not paths:
        report.bad(network.conf_path("Path"), "the ingress plugin needs a Path (for example /)", "PATH_REQUIRED")
    if not path_types:
        report.bad(network.conf_path("PathType"), "the ingress plugin needs a PathType (for example "
                   "ImplementationSpecific)", "PATH_TYPE_REQUIRED")
    for value in path_types:
        if value not in PATH_TYPES:
            report.bad(network.conf_path("PathType"), f"must be one of {', '.join(PATH_TYPES)}, got {value!r}",
                       "INVALID_PATH_TYPE")
    for name, items in (("Host", hosts), ("Path", paths)):
        for value in items:
            if value.count(network.ID_MARK) > 1:
                report.bad(network.conf_path(name), f"{value!r} has more than one {network.ID_MARK}",
                           "INVALID_ID_PLACEHOLDER")
    if not any(network.ID_MARK in v for v in hosts + paths):
        report.bad(network.conf_path("Host" if hosts or not paths else "Path"),
                   f"the Host or the Path must contain {network.ID_MARK} so that every instance gets its own "
                   "address (for example instances<id>-sd.example.com)", "MISSING_ID_PLACEHOLDER")
    for value in hosts:
        host = value.replace(network.ID_MARK, "0")
        if not DNS_SUBDOMAIN.match(host):
            report.bad(network.conf_path("Host"), f"{value!r} is not a lower-case DNS name once {network.ID_MARK} "
                       "is replaced by an id", "INVALID_HOST")
        elif host != policy.domain and not host.endswith("." + policy.domain):
            report.warn(network.conf_path("Host"), f"{value!r} is not under the root domain {policy.domain!r}: "
                        "the session cookie will not reach it and its users cannot sign in", "HOST_OUTSIDE_DOMAIN")
    for value in paths:
        if not value.startswith("/"):
            report.bad(network.conf_path("Path"), f"must start with '/', got {value!r}", "INVALID_PATH")


def _check_annotations(obj: dict[str, Any], policy: Policy, mode: Mode, report: Report) -> None:
    for value in network.values(obj, "Annotation"):
        pair = network.split_annotation(value)
        if pair is None:
            report.bad(network.conf_path("Annotation"), f"{value!r} must be 'key: value' with exactly one ': '",
                       "MALFORMED_ANNOTATION")
        elif pair[0].endswith("-snippet"):
            report.bad(network.conf_path("Annotation", pair[0]), "snippet annotations can switch the owner check "
                       "off and are not accepted", "SNIPPET_NOT_ALLOWED")
    found = network.annotations_by_key(obj)
    for key, expected, short in ((AUTH_URL_ANNOTATION, policy.auth_url, "auth-url"),
                                 (AUTH_SIGNIN_ANNOTATION, policy.auth_signin_url, "auth-signin")):
        path = network.conf_path("Annotation", key)
        given = found.get(key, [])
        if not given:
            report.bad(path, f"the {short} annotation is missing: instances would be open to anyone "
                       f"(expected {expected!r})", f"{short.replace('-', '_').upper()}_MISSING")
            continue
        if len(given) > 1:
            report.bad(path, f"the {short} annotation is given {len(given)} times", "DUPLICATE_ANNOTATION")
        for value in given:
            if key == AUTH_URL_ANNOTATION and not AUTH_URL_CHARS.match(value):
                report.bad(path, f"{value!r} holds characters ingress-nginx refuses in an auth-url "
                           "(allowed: letters, digits and -._~/: ,?&=$)", "AUTH_URL_CHARACTERS")
            elif key == AUTH_URL_ANNOTATION and value != expected and network.with_routed_host(value) == expected:
                # Published before the routed-host check: the gateway refuses every request to it.
                report.bad(path, f"{value!r} lacks rh=$host, the host the proxy routed on, without which the "
                           "gateway refuses every request; UpdateTemplate adds it", "AUTH_URL_ROUTED_HOST_MISSING")
            elif value != expected:
                report.bad(path, f"must point at this gateway: {expected!r}, got {value!r}",
                           f"{short.replace('-', '_').upper()}_MISMATCH")
    _check_response_headers(found.get(AUTH_RESPONSE_HEADERS_ANNOTATION, []), mode, report)


def _check_response_headers(given: list[str], mode: Mode, report: Report) -> None:
    """The identity headers must be named: the proxy then replaces (or removes) a client's own copies. So must
    `Cookie` in what is written (normalisation adds it); a template found without it stays usable, with a
    warning: its instances work as before, and refusing it would take every running instance of every template
    published earlier from its users at the upgrade, until an admin updates each one."""
    path = network.conf_path("Annotation", AUTH_RESPONSE_HEADERS_ANNOTATION)
    if len(given) > 1:
        report.bad(path, f"the auth-response-headers annotation is given {len(given)} times", "DUPLICATE_ANNOTATION")
    for value in given:
        names = network.header_names(value)
        if not RESPONSE_HEADERS_CHARS.match(value) or not all(HEADER_NAME.match(h) for h in names):
            report.bad(path, f"{value!r} is not a list of header names separated by ',' (ingress-nginx would leave "
                       "the instance's auth unconfigured)", "AUTH_RESPONSE_HEADERS_INVALID")
    if not given or any(network.with_headers(v, IDENTITY_HEADERS) != v for v in given):
        # Published before the gateway required it: a client's own X-Auth-Request-User reaches the instance.
        report.bad(path, f"must name {', '.join(IDENTITY_HEADERS)}: a header it does not name passes from the "
                   "client to the instance unchanged, so a client could claim any identity; UpdateTemplate adds "
                   "them", "AUTH_RESPONSE_HEADERS_MISSING")
    if not given or any(network.missing_headers(v, (COOKIE_HEADER,)) for v in given):
        (report.warn if mode is Mode.EXISTING else report.bad)(
            path, f"must name {COOKIE_HEADER}: otherwise the proxy passes the client's whole Cookie header to the "
            "instance, the gateway's session cookie of whoever opens it (its owner's, an admin's) included, where "
            "the instance's code can read it; UpdateTemplate adds it", "AUTH_RESPONSE_COOKIE_MISSING")


def _check_pod_template(spec: dict[str, Any], report: Report) -> None:
    template = spec.get("gameServerTemplate")
    if not isinstance(template, dict):
        report.bad(TEMPLATE, "a template needs a gameServerTemplate (the pod of every instance)", "REQUIRED")
        return
    pod = _dict(template.get("spec"))
    containers = _list(pod.get("containers"))
    if not containers:
        report.bad(f"{TEMPLATE}.spec.containers", "the pod needs at least one container", "REQUIRED")
    gpu_kinds: set[str] = set()
    for i, container in enumerate(containers):
        path = f"{TEMPLATE}.spec.containers[{i}]"
        if not isinstance(container, dict):
            report.bad(path, "must be a container object", "INVALID_CONTAINER")
            continue
        if not container.get("image"):
            report.bad(f"{path}.image", "the container needs an image", "IMAGE_REQUIRED")
        resources = _dict(container.get("resources"))
        for section in ("limits", "requests"):
            for key, value in _dict(resources.get(section)).items():
                where = f"{path}.resources.{section}[{key}]"
                try:
                    if key in COUNTED_RESOURCES:
                        count = plain_count(value)
                        if count > INT32_MAX:
                            report.bad(where, f"{count} {COUNTED_RESOURCES[key]} is more than {INT32_MAX}",
                                       "OUT_OF_RANGE")
                        elif count > 0:
                            gpu_kinds.add(key)
                    elif parse_quantity(value) < 0:
                        raise QuantityError(f"{value!r} is negative")
                except QuantityError as exc:
                    unit = f" ({COUNT_HINTS[key]})" if key in COUNT_HINTS else ""
                    report.bad(where, f"{exc}{unit}", "INVALID_QUANTITY")
    if len(gpu_kinds) > 1:
        report.warn(f"{TEMPLATE}.spec.containers", f"both {GPU} and {GPU_MEM} are requested; the template is shown "
                    "as a whole-GPU template", "MIXED_GPU_KINDS")
    _check_disks(template, containers, report)


def _check_disks(template: dict[str, Any], containers: list[Any], report: Report) -> None:
    claims = _list(template.get("volumeClaimTemplates"))
    if not claims:
        report.warn(f"{TEMPLATE}.volumeClaimTemplates", "no volumeClaimTemplates: an instance keeps no data when it "
                    "is paused, resumed or restarted", "NO_PERSISTENT_DISK")
        return
    mounted = {m.get("name") for c in containers if isinstance(c, dict)
               for m in _list(c.get("volumeMounts")) if isinstance(m, dict)}
    for i, claim in enumerate(claims):
        path = f"{TEMPLATE}.volumeClaimTemplates[{i}]"
        if not isinstance(claim, dict):
            report.bad(path, "must be a PersistentVolumeClaim template", "INVALID_CLAIM")
            continue
        name = _dict(claim.get("metadata")).get("name")
        if not name or not is_dns_label(name):
            report.bad(f"{path}.metadata.name", f"{name!r} is not a valid claim template name", "INVALID_CLAIM_NAME")
        elif name not in mounted:
            report.warn(f"{path}.metadata.name", f"no container mounts {name!r}: the disk is created but unused",
                        "UNMOUNTED_DISK")
        storage = _dict(_dict(_dict(claim.get("spec")).get("resources")).get("requests")).get("storage")
        where = f"{path}.spec.resources.requests[storage]"
        if storage is None:
            report.bad(where, "the disk needs a size (for example 50Gi)", "REQUIRED")
            continue
        try:
            if parse_quantity(storage) <= 0:
                report.bad(where, f"must be positive, got {storage!r}", "INVALID_QUANTITY")
        except QuantityError as exc:
            report.bad(where, str(exc), "INVALID_QUANTITY")


def unusable_reasons(report: Report) -> list[str]:
    """Why users cannot install a template found in the cluster (descriptions of the blocking violations)."""
    return [f"{v.field}: {v.description}" for v in report.violations if v.reason not in COSMETIC]
