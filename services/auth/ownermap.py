"""The owner map the hot path reads: host (+ path prefix) -> instance -> admitted owner (pure).

Routes come from the templates' Kubernetes-Ingress network settings and the
GameServers' reported endpoints (see :mod:`.routes`); owners from the shared
``instances`` table. Both are fed in by adapters; a lookup is dictionary work
only. Two instances claiming the same host and prefix make that route a
conflict that admits nobody, rather than whoever was written last.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aigc_gateway.names import InstanceRef

# A change, as plain JSON-able lists so that it can cross a process boundary (see :mod:`.workers`):
# ["r", namespace, template, id, [[host, prefix], ...]]  the instance's routes (empty: none)
# ["o", namespace, template, id, owner or None]          the admitted owner
# ["k", "", "", 0, bool]                                  whether the owners are known to be current
Event = list[Any]


@dataclass(frozen=True, order=True)
class InstanceKey(InstanceRef):
    """An instance as the owner map keys it: the core's :class:`InstanceRef` (its resource name included), read
    from and written as the ``aigc_instances`` NOTIFY payload ``ns/template/id``."""

    @property
    def notify_payload(self) -> str:
        return f"{self.namespace}/{self.template}/{self.id}"

    @classmethod
    def from_payload(cls, payload: str) -> InstanceKey | None:
        namespace, _, rest = payload.partition("/")
        template, _, ident = rest.partition("/")
        if not (namespace and template and ident.isdigit()):
            return None
        return cls(namespace, template, int(ident))


@dataclass(frozen=True, order=True)
class Route:
    host: str  # normalised (see urls.normalise_host)
    prefix: str = "/"  # "/" = the whole host; else a segment-bounded path prefix without trailing "/"


class Conflict:
    """Marker: more than one instance claims a route."""

    def __repr__(self) -> str:
        return "CONFLICT"


CONFLICT = Conflict()


def prefix_matches(prefix: str, path: str) -> bool:
    """Segment-bounded: ``/sd1`` matches ``/sd1`` and ``/sd1/x`` but not ``/sd10`` (nginx would route that
    to a longer location if it exists; refusing here is the safe side)."""
    return prefix == "/" or path == prefix or path.startswith(prefix + "/")


class OwnerMap:
    """In-memory, updated incrementally; every method is synchronous and does no I/O."""

    def __init__(self) -> None:
        self._routes_of: dict[InstanceKey, frozenset[Route]] = {}
        self._claims: dict[Route, set[InstanceKey]] = defaultdict(set)
        self._claimed_on: dict[str, set[Route]] = defaultdict(set)  # host -> its claimed routes
        # host -> ((prefix, key or CONFLICT), ...) longest prefix first
        self._by_host: dict[str, tuple[tuple[str, InstanceKey | Conflict], ...]] = {}
        self._owners: dict[InstanceKey, str] = {}
        self._listeners: list[Callable[[Event], None]] = []
        # False while the feed cannot vouch for the owners (the database is out of reach): every check is
        # then refused, because an owner it did not hear about (a pause, an uninstall) would be admitted.
        self.known = True
        # Moves with every change of a route, an owner or ``known``: a decision taken at one generation holds
        # while the generation is the same (answers.py gives such decisions again without deciding them).
        self.generation = 0

    # -- replication (the HTTP worker processes keep a copy) ------------

    def subscribe(self, listener: Callable[[Event], None]) -> None:
        """Call ``listener`` with every change from now on (synchronously, in order)."""
        self._listeners.append(listener)

    def unsubscribe(self, listener: Callable[[Event], None]) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def _emit(self, event: Event) -> None:
        for listener in self._listeners:
            listener(event)

    def snapshot(self) -> list[Event]:
        """Events that rebuild this map in an empty one (the current state, not the history)."""
        events: list[Event] = [["r", k.namespace, k.template, k.id, [[r.host, r.prefix] for r in sorted(routes)]]
                               for k, routes in self._routes_of.items()]
        events += [["o", k.namespace, k.template, k.id, owner] for k, owner in self._owners.items()]
        events.append(["k", "", "", 0, self.known])
        return events

    def apply(self, event: Event) -> None:
        """Apply one change made by another map's :meth:`subscribe` listener."""
        kind, namespace, template, ident, value = event
        if kind == "k":
            self.set_known(bool(value))
            return
        key = InstanceKey(namespace, template, int(ident))
        if kind == "r":
            self.set_routes(key, frozenset(Route(host, prefix) for host, prefix in value))
        elif kind == "o":
            self.set_owner(key, value)
        else:
            raise ValueError(f"unknown owner map event {kind!r}")

    # -- routes ---------------------------------------------------------

    def set_routes(self, key: InstanceKey, routes: frozenset[Route] | set[Route]) -> None:
        routes = frozenset(routes)
        old = self._routes_of.get(key, frozenset())
        if old == routes:
            return
        for route in old - routes:
            claims = self._claims[route]
            claims.discard(key)
            if not claims:
                del self._claims[route]
                on_host = self._claimed_on[route.host]
                on_host.discard(route)
                if not on_host:
                    del self._claimed_on[route.host]
        for route in routes - old:
            self._claims[route].add(key)
            self._claimed_on[route.host].add(route)
        self.generation += 1
        if routes:
            self._routes_of[key] = routes
        else:
            self._routes_of.pop(key, None)
        for host in {r.host for r in old ^ routes}:
            self._rebuild_host(host)
        if self._listeners:
            self._emit(["r", key.namespace, key.template, key.id, [[r.host, r.prefix] for r in sorted(routes)]])

    def drop_routes(self, key: InstanceKey) -> None:
        self.set_routes(key, frozenset())

    def replace_routes(self, routes: dict[InstanceKey, frozenset[Route]]) -> None:
        for key in set(self._routes_of) - set(routes):
            self.drop_routes(key)
        for key, value in routes.items():
            self.set_routes(key, value)

    def routes_of(self, key: InstanceKey) -> frozenset[Route]:
        return self._routes_of.get(key, frozenset())

    def _rebuild_host(self, host: str) -> None:
        # Only this host's routes: scanning every claim made filling a map of n instances cost n².
        entries = [(route.prefix, next(iter(keys)) if len(keys) == 1 else CONFLICT)
                   for route in self._claimed_on.get(host, ()) if (keys := self._claims.get(route))]
        if entries:
            entries.sort(key=lambda e: len(e[0]), reverse=True)
            self._by_host[host] = tuple(entries)
        else:
            self._by_host.pop(host, None)

    # -- owners ---------------------------------------------------------

    def set_known(self, known: bool) -> None:
        if self.known == known:
            return
        self.known = known
        self.generation += 1
        if self._listeners:
            self._emit(["k", "", "", 0, known])

    def set_owner(self, key: InstanceKey, owner: str | None) -> None:
        """``owner`` is the user admitted now (slot LIVE); None for paused, releasing, free or gone."""
        owner = owner or None
        if self._owners.get(key) == owner:
            return
        self.generation += 1
        if owner:
            self._owners[key] = owner
        else:
            self._owners.pop(key, None)
        if self._listeners:
            self._emit(["o", key.namespace, key.template, key.id, owner])

    def owner(self, key: InstanceKey) -> str | None:
        return self._owners.get(key)

    # -- the hot path ---------------------------------------------------

    def lookup(self, host: str, path: str) -> InstanceKey | Conflict | None:
        entries = self._by_host.get(host)
        if not entries:
            return None
        for prefix, key in entries:
            if prefix_matches(prefix, path):
                return key
        return None

    def __len__(self) -> int:
        return len(self._routes_of)

    @property
    def admitted(self) -> int:
        return len(self._owners)
