"""Resource names from what an admin types: `sd-cpu` or `namespaces/default/templates/sd-cpu`;
`sd-cpu/3` or `namespaces/default/templates/sd-cpu/instances/3`."""
from __future__ import annotations

import re

from .exitcodes import Exit, Failure

_SEGMENT = r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?"
_TEMPLATE = re.compile(rf"^namespaces/({_SEGMENT}|-)/templates/({_SEGMENT}|-)$")
_INSTANCE = re.compile(rf"^namespaces/{_SEGMENT}/templates/{_SEGMENT}/instances/\d+$")
_SHORT_SEGMENT = re.compile(rf"^{_SEGMENT}$")


def template_name(arg: str, namespace: str) -> str:
    if arg.startswith("namespaces/"):
        if not _TEMPLATE.match(arg) or arg.endswith("/-"):
            raise Failure(f"{arg!r} is not a template name (namespaces/NS/templates/NAME)", Exit.USAGE)
        return arg
    if not _SHORT_SEGMENT.match(arg):
        raise Failure(f"{arg!r} is not a template name (a GameServerSet name such as sd-cpu)", Exit.USAGE)
    return f"namespaces/{namespace}/templates/{arg}"


def template_parent(template: str | None, namespace: str, all_namespaces: bool = False) -> str:
    """The parent of ListInstances/CheckConsistency: one template, or `-` for any."""
    ns = "-" if all_namespaces else namespace
    if not template:
        return f"namespaces/{ns}/templates/-"
    return template_name(template, namespace)


def instance_name(arg: str, namespace: str) -> str:
    if arg.startswith("namespaces/"):
        if not _INSTANCE.match(arg):
            raise Failure(f"{arg!r} is not an instance name (namespaces/NS/templates/T/instances/ID)", Exit.USAGE)
        return arg
    template, _, ident = arg.rpartition("/")
    if not template or not ident.isdigit():
        raise Failure(f"{arg!r} is not an instance name: give TEMPLATE/ID (e.g. sd-cpu/0) or the full name",
                      Exit.USAGE)
    return f"{template_name(template, namespace)}/instances/{int(ident)}"


def short(name: str) -> str:
    """`namespaces/default/templates/sd/instances/3` -> `default/sd/3` for tables."""
    parts = name.split("/")
    return "/".join(parts[1::2]) if len(parts) % 2 == 0 else name
