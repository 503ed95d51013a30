"""Resource names usersync accepts (Google API design guide style)."""
from __future__ import annotations

import re

from aigc_gateway.errors import invalid

_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")  # a DNS-1123 label: namespaces, GameServerSets
_TEMPLATE = re.compile(r"^namespaces/([^/]+)/templates/([^/]+)$")
_INSTANCE = re.compile(r"^(namespaces/[^/]+/templates/[^/]+)/instances/([0-9]{1,9})$")


def template_name(namespace: str, template: str) -> str:
    return f"namespaces/{namespace}/templates/{template}"


def instance_name(namespace: str, template: str, instance_id: int) -> str:
    return f"{template_name(namespace, template)}/instances/{instance_id}"


def parse_template(value: str, field: str = "template") -> tuple[str, str]:
    """``namespaces/{ns}/templates/{name}`` -> (ns, name), or INVALID_ARGUMENT naming the field."""
    match = _TEMPLATE.match(value or "")
    if not match:
        raise invalid(field, f"must be namespaces/{{namespace}}/templates/{{template}}, got {value!r}")
    namespace, template = match.groups()
    for part, what in ((namespace, "namespace"), (template, "template")):
        if not _LABEL.match(part):
            raise invalid(field, f"{what} {part!r} is not a valid Kubernetes name (lower-case DNS label)")
    return namespace, template


def parse_user(value: str, field: str = "user") -> str:
    """A Logto user id (also accepted as ``users/{id}``)."""
    user = value[len("users/"):] if value.startswith("users/") else value
    if not user or len(user) > 255 or "/" in user or not user.isprintable() or user.strip() != user:
        raise invalid(field, "must be a Logto user id")
    return user


def parse_instance(value: str, field: str = "name") -> tuple[str, str, int]:
    """``namespaces/{ns}/templates/{name}/instances/{id}`` -> (ns, name, id)."""
    match = _INSTANCE.match(value or "")
    if not match:
        raise invalid(field, f"must be namespaces/{{namespace}}/templates/{{template}}/instances/{{id}}, "
                      f"got {value!r}")
    namespace, template = parse_template(match[1], field)
    return namespace, template, int(match[2])
