"""The Kubernetes-Ingress network configuration of a GameServerSet (`spec.network.networkConf`).

The OKG Ingress plugin reads a list of {name, value} entries: `Host` and `Path` may carry one
`<id>` (replaced by the instance id), `Port` is the container port, and each `Annotation`
entry is `key: value` (split on ": ", so exactly one such separator) copied onto the ingress.

The auth-url carries the host the proxy routed on as `rh=$host` (ingress-nginx and Traefik's
ingress-nginx provider expand `$host`): the auth service refuses a check whose request names another
host than the one routed (an absolute-form request line), see docs/auth.md. The
`auth-response-headers` annotation names the identity headers and `Cookie`, so the proxy replaces (or
removes) a client's own copies with the auth answer's, and the gateway's cookies never reach the instance.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from aigc_gateway import okg

ID_MARK = okg.ID_MARK
CONF_PATH = "spec.network.networkConf"


def conf_path(name: str, key: str = "") -> str:
    """`spec.network.networkConf[Host]`, or `...[Annotation][nginx.ingress.kubernetes.io/auth-url]`."""
    return f"{CONF_PATH}[{name}]" + (f"[{key}]" if key else "")


@dataclass(frozen=True)
class Entry:
    index: int
    name: str
    value: Any


def entries(obj: dict[str, Any]) -> list[Entry]:
    network = (obj.get("spec") or {}).get("network") or {}
    conf = network.get("networkConf") if isinstance(network, dict) else None
    if not isinstance(conf, list):
        return []
    return [Entry(i, str(e.get("name", "")), e.get("value")) for i, e in enumerate(conf) if isinstance(e, dict)]


def network_type(obj: dict[str, Any]) -> str:
    network = (obj.get("spec") or {}).get("network")
    return str(network.get("networkType") or "") if isinstance(network, dict) else ""


def values(obj: dict[str, Any], name: str) -> list[str]:
    return [str(e.value) if e.value is not None else "" for e in entries(obj) if e.name == name]


def first(obj: dict[str, Any], name: str) -> str:
    found = values(obj, name)
    return found[0] if found else ""


def split_annotation(value: str) -> tuple[str, str] | None:
    """(key, value) as the plugin splits it, or None when the plugin would refuse the entry."""
    parts = value.split(": ")
    return (parts[0].strip(), parts[1].strip()) if len(parts) == 2 and parts[0].strip() else None


def annotations_by_key(obj: dict[str, Any]) -> dict[str, list[str]]:
    """Every well-formed `Annotation` entry by key (a key given twice maps to both values)."""
    found: dict[str, list[str]] = {}
    for value in values(obj, "Annotation"):
        pair = split_annotation(value)
        if pair:
            found.setdefault(pair[0], []).append(pair[1])
    return found


def port(obj: dict[str, Any]) -> int:
    try:
        return int(first(obj, "Port"))
    except ValueError:
        return 0


ROUTED_HOST_PARAM = "rh"
ROUTED_HOST_VALUE = "$host"


def has_routed_host(url: str) -> bool:
    """Whether an auth-url's query has an ``rh`` parameter (whatever its value)."""
    try:
        query = urlsplit(url).query
    except ValueError:
        return False
    return any(item.split("=", 1)[0] == ROUTED_HOST_PARAM for item in query.split("&") if item)


def with_routed_host(url: str) -> str:
    """``url`` with ``rh=$host`` added to its query when it has no ``rh`` (unchanged otherwise)."""
    if not url or has_routed_host(url):
        return url
    separator = "&" if "?" in url else "?"
    if url.endswith(("?", "&")):
        separator = ""
    return f"{url}{separator}{ROUTED_HOST_PARAM}={ROUTED_HOST_VALUE}"


def header_names(value: str) -> list[str]:
    """The header names of an `auth-response-headers` value, as ingress-nginx splits it (on ',', trimmed)."""
    return [h.strip() for h in value.split(",") if h.strip()]


def missing_headers(value: str, required: tuple[str, ...]) -> list[str]:
    """The headers of ``required`` an `auth-response-headers` value does not name (compared case-insensitively)."""
    have = {h.lower() for h in header_names(value)}
    return [h for h in required if h.lower() not in have]


def with_headers(value: str, required: tuple[str, ...]) -> str:
    """An `auth-response-headers` value naming every header of ``required`` (header names compare
    case-insensitively): ``value`` unchanged when it does, else its names followed by the missing ones."""
    missing = missing_headers(value, required)
    return ",".join(header_names(value) + missing) if missing else value
