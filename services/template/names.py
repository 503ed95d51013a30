"""Resource names of templates (AIP-122): `namespaces/{namespace}/templates/{template}`."""
from __future__ import annotations

import re

from aigc_gateway.errors import invalid

ALL_NAMESPACES = "-"
# DNS-1123 label: what a Kubernetes namespace name must be.
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
# A GameServerSet name becomes the name of Services `<gss>-<id>` (DNS-1035: starts with a letter) and of the
# Advanced StatefulSet, whose `controller-revision-hash` label `<name>-<hash>` must stay within 63 characters.
GSS_NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
GSS_NAME_MAX = 52


def template_name(namespace: str, name: str) -> str:
    return f"namespaces/{namespace}/templates/{name}"


def parse_template_name(value: str, field: str = "name") -> tuple[str, str]:
    """(namespace, template) of `namespaces/{ns}/templates/{name}`; INVALID_ARGUMENT on `field` otherwise."""
    parts = value.split("/")
    if len(parts) != 4 or parts[0] != "namespaces" or parts[2] != "templates" or not parts[1] or not parts[3]:
        raise invalid(field, f"must be namespaces/{{namespace}}/templates/{{template}}, got {value!r}")
    if not DNS_LABEL.match(parts[1]):
        raise invalid(field, f"namespace {parts[1]!r} is not a valid Kubernetes namespace name")
    if not DNS_LABEL.match(parts[3]):
        raise invalid(field, f"template {parts[3]!r} is not a valid GameServerSet name")
    return parts[1], parts[3]


def parse_parent(value: str, field: str = "parent", *, allow_all: bool = True) -> str:
    """The namespace of `namespaces/{ns}` (or `-` for every namespace when ``allow_all``)."""
    parts = value.split("/")
    if len(parts) != 2 or parts[0] != "namespaces" or not parts[1]:
        raise invalid(field, f"must be namespaces/{{namespace}}{' or namespaces/-' if allow_all else ''}, "
                             f"got {value!r}")
    if parts[1] == ALL_NAMESPACES:
        if not allow_all:
            raise invalid(field, "must name one namespace here, not namespaces/-")
        return ALL_NAMESPACES
    if not DNS_LABEL.match(parts[1]):
        raise invalid(field, f"namespace {parts[1]!r} is not a valid Kubernetes namespace name")
    return parts[1]
