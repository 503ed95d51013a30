"""Resource names (AIP-122) of templates and instances, parsed strictly.

`namespaces/{namespace}/templates/{template}` and
`namespaces/{namespace}/templates/{template}/instances/{id}`; `-` stands for
"any" in a List parent. A malformed name is INVALID_ARGUMENT on the field that
carries it, before anything is read or written.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from aigc_gateway.errors import invalid

ANY = "-"
# DNS-1123 label: what namespace and GameServerSet names must be.
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
# Decimal, no sign, no leading zero: exactly one spelling per id, so names compare as strings.
INSTANCE_ID = re.compile(r"^(0|[1-9][0-9]{0,8})$")


@dataclass(frozen=True, order=True)
class TemplateRef:
    namespace: str
    template: str

    @property
    def name(self) -> str:
        return f"namespaces/{self.namespace}/templates/{self.template}"

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
        return f"namespaces/{self.namespace}/templates/{self.template}/instances/{self.id}"

    @property
    def game_server(self) -> str:
        """The GameServer and pod name `<gss>-<id>`."""
        return f"{self.template}-{self.id}"


def _label(value: str, what: str, field: str) -> str:
    if not DNS_LABEL.match(value):
        raise invalid(field, f"{what} {value!r} is not a valid Kubernetes name (lower-case DNS label)")
    return value


def parse_template(value: str, field: str = "parent") -> TemplateRef:
    parts = value.split("/")
    if len(parts) != 4 or parts[0] != "namespaces" or parts[2] != "templates":
        raise invalid(field, f"must be namespaces/{{namespace}}/templates/{{template}}, got {value!r}")
    return TemplateRef(_label(parts[1], "namespace", field), _label(parts[3], "template", field))


def parse_instance(value: str, field: str = "name") -> InstanceRef:
    parts = value.split("/")
    if len(parts) != 6 or parts[0] != "namespaces" or parts[2] != "templates" or parts[4] != "instances":
        raise invalid(field, f"must be namespaces/{{namespace}}/templates/{{template}}/instances/{{id}}, "
                             f"got {value!r}")
    if not INSTANCE_ID.match(parts[5]):
        raise invalid(field, f"instance id {parts[5]!r} must be a non-negative decimal integer")
    return InstanceRef(_label(parts[1], "namespace", field), _label(parts[3], "template", field), int(parts[5]))


def parse_list_parent(value: str, field: str = "parent") -> tuple[str | None, str | None]:
    """(namespace, template) of a List parent; None where it is `-` (any)."""
    parts = value.split("/")
    if len(parts) != 4 or parts[0] != "namespaces" or parts[2] != "templates":
        raise invalid(field, f"must be namespaces/{{namespace|-}}/templates/{{template|-}}, got {value!r}")
    namespace = None if parts[1] == ANY else _label(parts[1], "namespace", field)
    template = None if parts[3] == ANY else _label(parts[3], "template", field)
    return namespace, template
