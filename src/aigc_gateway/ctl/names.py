"""Resource names from what an admin types: `sd-cpu` or `namespaces/default/templates/sd-cpu`;
`sd-cpu/3` or `namespaces/default/templates/sd-cpu/instances/3`.

The short forms are the CLI's own; what makes a name valid is the core's (:mod:`aigc_gateway.names`), the
rule every service applies, so a name the CLI lets through is not refused later for its spelling.
"""
from __future__ import annotations

from collections.abc import Callable

from aigc_gateway import names
from aigc_gateway.errors import InvalidArgument

from .exitcodes import Exit, Failure


def _full(arg: str, parse: Callable[[str, str], object], what: str) -> str:
    """``arg`` when the core parser accepts it; a usage failure quoting the parser's reason otherwise."""
    try:
        parse(arg, "name")
    except InvalidArgument as exc:
        raise Failure(f"{arg!r} is not {what}: {exc.violations[0].description}", Exit.USAGE) from None
    return arg


def template_name(arg: str, namespace: str) -> str:
    if arg.startswith("namespaces/"):
        return _full(arg, names.parse_template, "a template name (namespaces/NS/templates/NAME)")
    if not names.is_template_name(arg):
        raise Failure(f"{arg!r} is not a template name (a GameServerSet name such as sd-cpu: "
                      f"{names.TEMPLATE_NAME_RULE})", Exit.USAGE)
    return names.template_name(namespace, arg)


def template_parent(template: str | None, namespace: str, all_namespaces: bool = False) -> str:
    """The parent of ListInstances/CheckConsistency: one template, or `-` for any."""
    ns = names.ANY if all_namespaces else namespace
    if not template:
        return names.template_name(ns, names.ANY)
    return template_name(template, namespace)


def instance_name(arg: str, namespace: str) -> str:
    if arg.startswith("namespaces/"):
        return _full(arg, names.parse_instance, "an instance name (namespaces/NS/templates/T/instances/ID)")
    template, _, ident = arg.rpartition("/")
    if not template or not ident.isdigit():
        raise Failure(f"{arg!r} is not an instance name: give TEMPLATE/ID (e.g. sd-cpu/0) or the full name",
                      Exit.USAGE)
    return f"{template_name(template, namespace)}/instances/{int(ident)}"


def short(name: str) -> str:
    """`namespaces/default/templates/sd/instances/3` -> `default/sd/3` for tables."""
    parts = name.split("/")
    return "/".join(parts[1::2]) if len(parts) % 2 == 0 else name
