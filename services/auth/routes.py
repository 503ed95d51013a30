"""Where an instance is served: its ingress host and path prefixes (pure).

kruise-game's Kubernetes-Ingress network plugin builds each GameServer's
Ingress from the template's ``networkConf``: ``Host`` and every ``Path`` with
``<id>`` replaced by the instance id, and, once the ingress has a load
balancer address, reports ``status.networkStatus.externalAddresses[0]
.endPoint`` (the host) with one port per path (named after the path). The
reported endpoint wins when present (it is what the ingress really serves);
the template's pattern covers the time before the network is ready.

Paths may be regular expressions (``/game<id>(/|$)(.*)`` with ingress-nginx's
use-regex): only the literal part before the first metacharacter is used as the
prefix, matched at segment boundaries, which can only admit less than nginx
routes, never more.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from aigc_gateway import okg

from .ownermap import InstanceKey, OwnerMap, Route
from .urls import BadURL, normalise_host, normalise_path

_REGEX_META = re.compile(r"[()\[\]{}*+?|^$\\]")


@dataclass(frozen=True)
class RoutePattern:
    """A template's ingress settings, ``<id>`` not yet substituted."""

    host: str
    paths: tuple[str, ...] = ("/",)

    def routes(self, instance_id: int) -> frozenset[Route]:
        host = okg.with_id(self.host, instance_id)
        try:
            normalised = normalise_host(host) if host is not None else None
        except BadURL:
            normalised = None
        if normalised is None:
            return frozenset()
        paths = (okg.with_id(p, instance_id) for p in self.paths)
        return frozenset(Route(normalised, path_prefix(p)) for p in paths if p is not None)


def path_prefix(path: str) -> str:
    """The literal, normalised prefix of an ingress path, without a trailing slash ("/" for the root)."""
    literal = _REGEX_META.split(path, maxsplit=1)[0] or "/"
    if not literal.startswith("/"):
        literal = "/" + literal
    try:
        normalised = normalise_path(literal)
    except BadURL:
        return "/"  # cannot be narrowed: the route is the whole host (still exact on the host)
    return normalised.rstrip("/") or "/"


def route_pattern(gss: dict[str, Any]) -> RoutePattern | None:
    """The ingress pattern of a GameServerSet, or None when it is not served through a Kubernetes Ingress."""
    network = (gss.get("spec") or {}).get("network") or {}
    if network.get("networkType") != okg.INGRESS_NETWORK:
        return None
    host = ""
    paths: list[str] = []
    for item in network.get("networkConf") or []:
        name, value = item.get("name"), str(item.get("value") or "")
        if name == "Host":
            host = value
        elif name == "Path" and value:
            paths.append(value)
    if not host:
        return None
    return RoutePattern(host=host, paths=tuple(paths) or ("/",))


def reported_routes(gameserver: dict[str, Any]) -> frozenset[Route]:
    """The routes a GameServer's network status reports (empty until the ingress is ready)."""
    status = (gameserver.get("status") or {}).get("networkStatus") or {}
    routes: set[Route] = set()
    for address in status.get("externalAddresses") or []:
        endpoint = address.get("endPoint") or ""
        try:
            host = normalise_host(endpoint)
        except BadURL:
            continue
        ports = address.get("ports") or []
        prefixes = {path_prefix(p.get("name") or "/") for p in ports if str(p.get("name") or "").startswith("/")}
        routes.update(Route(host, prefix) for prefix in (prefixes or {"/"}))
    return frozenset(routes)


def instance_of(gameserver: dict[str, Any]) -> InstanceKey | None:
    """The (namespace, template, id) of a GameServer named ``<gss>-<id>`` with the owner-gss label."""
    found = okg.instance_of(gameserver)
    return InstanceKey(*found) if found else None


def instance_routes(pattern: RoutePattern | None, instance_id: int,
                    gameserver: dict[str, Any] | None) -> frozenset[Route]:
    reported = reported_routes(gameserver) if gameserver else frozenset()
    if reported:
        return reported
    return pattern.routes(instance_id) if pattern else frozenset()


class RouteIndex:
    """Joins templates, GameServers and owned ids into the owner map's routes (no I/O).

    An instance gets routes while a GameServer exists for it or the ownership table has an owner for
    it (so a just-installed instance is reachable before kruise-game reports its network)."""

    def __init__(self, owners: OwnerMap):
        self.owners = owners
        self.patterns: dict[tuple[str, str], RoutePattern | None] = {}
        self.gameservers: dict[InstanceKey, dict[str, Any]] = {}
        self.owned: set[InstanceKey] = set()
        self._by_template: dict[tuple[str, str], set[InstanceKey]] = {}

    def _refresh(self, key: InstanceKey) -> None:
        if key in self.gameservers or key in self.owned:
            self._by_template.setdefault((key.namespace, key.template), set()).add(key)
            pattern = self.patterns.get((key.namespace, key.template))
            self.owners.set_routes(key, instance_routes(pattern, key.id, self.gameservers.get(key)))
        else:
            keys = self._by_template.get((key.namespace, key.template))
            if keys is not None:
                keys.discard(key)
            self.owners.drop_routes(key)

    def set_template(self, namespace: str, template: str, pattern: RoutePattern | None) -> None:
        known = (namespace, template) in self.patterns
        if (not known and pattern is None) or (known and self.patterns[(namespace, template)] == pattern):
            return
        if pattern is None:
            self.patterns.pop((namespace, template), None)
        else:
            self.patterns[(namespace, template)] = pattern
        for key in list(self._by_template.get((namespace, template), ())):
            self._refresh(key)

    def replace_templates(self, patterns: dict[tuple[str, str], RoutePattern | None]) -> None:
        for gone in set(self.patterns) - set(patterns):
            self.set_template(*gone, None)
        for (namespace, template), pattern in patterns.items():
            self.set_template(namespace, template, pattern)

    def set_gameserver(self, key: InstanceKey, gameserver: dict[str, Any] | None) -> None:
        if gameserver is None:
            self.gameservers.pop(key, None)
        else:
            self.gameservers[key] = gameserver
        self._refresh(key)

    def replace_gameservers(self, gameservers: dict[InstanceKey, dict[str, Any]]) -> None:
        for gone in set(self.gameservers) - set(gameservers):
            self.set_gameserver(gone, None)
        for key, obj in gameservers.items():
            self.set_gameserver(key, obj)

    def set_owned(self, key: InstanceKey, owned: bool) -> None:
        if owned == (key in self.owned):
            return
        if owned:
            self.owned.add(key)
        else:
            self.owned.discard(key)
        self._refresh(key)
