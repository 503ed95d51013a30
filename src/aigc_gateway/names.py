"""Resource names (AIP-122) of templates and instances, and the name rules under them, for every service.

``namespaces/{namespace}/templates/{template}`` and
``namespaces/{namespace}/templates/{template}/instances/{id}``; ``-`` stands for "any" in a List parent.
A malformed name is INVALID_ARGUMENT on the field that carries it, before anything is read or written.

One module, because each service (and the CLI) used to hold its own parser, and they disagreed: the
instance and usersync services accepted template names the template service refuses to publish. A
template name follows the template service's rule (:data:`GSS_NAME`, at most :data:`GSS_NAME_MAX`
characters) everywhere; a namespace is a DNS-1123 label; an id has exactly one spelling.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import invalid
from .okg import game_server_name

ANY = "-"
# DNS-1123 label: what a namespace name must be.
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
# A GameServerSet name becomes the name of Services `<gss>-<id>` (DNS-1035: starts with a letter) and of the
# Advanced StatefulSet, whose `controller-revision-hash` label `<name>-<hash>` must stay within 63 characters.
GSS_NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
GSS_NAME_MAX = 52
TEMPLATE_NAME_RULE = (f"lower-case letters, digits and '-', starting with a letter, at most {GSS_NAME_MAX} "
                      "characters (instances are named <name>-<id>)")
# Decimal, no sign, no leading zero, within int32: exactly one spelling per id, so names compare as strings.
INSTANCE_ID = re.compile(r"^(0|[1-9][0-9]{0,8})$")


def is_dns_label(value: object) -> bool:
    """A DNS-1123 label (namespaces, volumeClaimTemplate names...)."""
    return isinstance(value, str) and bool(DNS_LABEL.match(value))


def is_namespace(value: object) -> bool:
    return is_dns_label(value)


def is_template_name(value: object) -> bool:
    """The template service's rule for a GameServerSet it publishes; every service applies the same."""
    return isinstance(value, str) and len(value) <= GSS_NAME_MAX and bool(GSS_NAME.match(value))


def template_name(namespace: str, template: str) -> str:
    return f"namespaces/{namespace}/templates/{template}"


def instance_name(namespace: str, template: str, instance_id: int) -> str:
    return f"{template_name(namespace, template)}/instances/{instance_id}"


@dataclass(frozen=True, order=True)
class TemplateRef:
    namespace: str
    template: str

    @property
    def name(self) -> str:
        return template_name(self.namespace, self.template)

    @property
    def key(self) -> str:
        """`ns/tpl`: the allocator lock and log key."""
        return f"{self.namespace}/{self.template}"

    def instance(self, instance_id: int) -> InstanceRef:
        return InstanceRef(self.namespace, self.template, instance_id)


@dataclass(frozen=True, order=True)
class InstanceRef:
    namespace: str
    template: str
    id: int

    @property
    def template_ref(self) -> TemplateRef:
        return TemplateRef(self.namespace, self.template)

    @property
    def name(self) -> str:
        return instance_name(self.namespace, self.template, self.id)

    @property
    def game_server(self) -> str:
        """The GameServer and pod name `<gss>-<id>`."""
        return game_server_name(self.template, self.id)


def check_namespace(value: str, field: str) -> str:
    if not is_namespace(value):
        raise invalid(field, f"namespace {value!r} is not a valid Kubernetes namespace name (lower-case DNS label)")
    return value


def check_template(value: str, field: str) -> str:
    if not is_template_name(value):
        raise invalid(field, f"template {value!r} is not a valid template name: {TEMPLATE_NAME_RULE}")
    return value


def _template_parts(value: str) -> list[str] | None:
    parts = (value or "").split("/")
    return parts if len(parts) == 4 and parts[0] == "namespaces" and parts[2] == "templates" else None


def parse_template(value: str, field: str = "parent") -> TemplateRef:
    """``namespaces/{ns}/templates/{template}``; INVALID_ARGUMENT on ``field`` otherwise."""
    parts = _template_parts(value)
    if parts is None:
        raise invalid(field, f"must be namespaces/{{namespace}}/templates/{{template}}, got {value!r}")
    return TemplateRef(check_namespace(parts[1], field), check_template(parts[3], field))


def parse_instance(value: str, field: str = "name") -> InstanceRef:
    """``namespaces/{ns}/templates/{template}/instances/{id}``; INVALID_ARGUMENT on ``field`` otherwise."""
    parts = (value or "").split("/")
    if len(parts) != 6 or parts[0] != "namespaces" or parts[2] != "templates" or parts[4] != "instances":
        raise invalid(field, f"must be namespaces/{{namespace}}/templates/{{template}}/instances/{{id}}, "
                             f"got {value!r}")
    if not INSTANCE_ID.match(parts[5]):
        raise invalid(field, f"instance id {parts[5]!r} must be a non-negative decimal integer")
    return InstanceRef(check_namespace(parts[1], field), check_template(parts[3], field), int(parts[5]))


def parse_list_parent(value: str, field: str = "parent") -> tuple[str | None, str | None]:
    """(namespace, template) of a List parent ``namespaces/{ns|-}/templates/{template|-}``; None for `-`."""
    parts = _template_parts(value)
    if parts is None:
        raise invalid(field, f"must be namespaces/{{namespace|-}}/templates/{{template|-}}, got {value!r}")
    namespace = None if parts[1] == ANY else check_namespace(parts[1], field)
    template = None if parts[3] == ANY else check_template(parts[3], field)
    return namespace, template


def parse_namespace_parent(value: str, field: str = "parent", *, allow_all: bool = True) -> str:
    """The namespace of ``namespaces/{ns}`` (or `-` for every namespace when ``allow_all``)."""
    parts = (value or "").split("/")
    if len(parts) != 2 or parts[0] != "namespaces" or not parts[1]:
        raise invalid(field, f"must be namespaces/{{namespace}}{' or namespaces/-' if allow_all else ''}, "
                             f"got {value!r}")
    if parts[1] == ANY:
        if not allow_all:
            raise invalid(field, "must name one namespace here, not namespaces/-")
        return ANY
    return check_namespace(parts[1], field)
