"""The auth check fails closed while the owner map cannot be vouched for (pure parts, no servers).

The link tests (tests/chaos/test_links.py) cut the real database link; these pin the rules they rely on:
an unknown map refuses everyone (owner and admin too), the state crosses to the HTTP workers' copies, and
`OwnershipFollower.fresh` turns false ``stale_after`` seconds after the last read or ping, and does not
turn true on a reconnection until a full read made after it."""
from __future__ import annotations

from types import SimpleNamespace

from aigc_gateway.identity import Principal
from aigc_gateway.services.auth.decision import Outcome, decide
from aigc_gateway.services.auth.ownermap import InstanceKey, OwnerMap
from aigc_gateway.services.auth.routes import RouteIndex, RoutePattern
from aigc_gateway.services.auth.sources import OwnershipFollower
from aigc_gateway.services.auth.urls import parse_original_url

ALICE = Principal("alice")
ADMIN = Principal("root", roles=("admin",), admin=True)
KEY = InstanceKey("ns", "cpu", 1)


def _map() -> OwnerMap:
    owners = OwnerMap()
    owners.set_routes(KEY, RoutePattern("instances<id>-cpu.aigc.test").routes(1))
    owners.set_owner(KEY, "alice")
    return owners


def _decide(owners: OwnerMap, principal: Principal, allow_admin: bool = False) -> Outcome:
    target = parse_original_url("https://instances1-cpu.aigc.test/")
    return decide(target, principal, owners, allow_admin=allow_admin).outcome


def test_an_unknown_map_refuses_the_owner_and_the_admin() -> None:
    owners = _map()
    assert _decide(owners, ALICE) is Outcome.ALLOW
    owners.set_known(False)
    assert _decide(owners, ALICE) is Outcome.FORBIDDEN
    assert _decide(owners, ADMIN, allow_admin=True) is Outcome.FORBIDDEN
    decision = decide(parse_original_url("https://instances1-cpu.aigc.test/"), ALICE, owners)
    assert decision.code == "OWNERS_UNKNOWN"
    assert decide(parse_original_url("https://instances1-cpu.aigc.test/"), None, owners).outcome \
        is Outcome.UNAUTHENTICATED
    owners.set_known(True)
    assert _decide(owners, ALICE) is Outcome.ALLOW


def test_the_known_state_reaches_a_workers_copy() -> None:
    parent, copy = _map(), OwnerMap()
    for event in parent.snapshot():
        copy.apply(event)
    parent.subscribe(copy.apply)
    parent.set_known(False)
    assert copy.known is False and _decide(copy, ALICE) is Outcome.FORBIDDEN
    late = OwnerMap()  # a worker started while the map is unknown starts unknown
    for event in parent.snapshot():
        late.apply(event)
    assert late.known is False
    parent.set_known(True)
    assert copy.known is True and _decide(copy, ALICE) is Outcome.ALLOW


def _follower(listener: object | None) -> OwnershipFollower:
    follower = OwnershipFollower.__new__(OwnershipFollower)  # no database: only the freshness rule
    follower.stale_after = 5.0
    follower._read_at = 0.0
    follower.listener = listener  # type: ignore[assignment]
    return follower


def test_freshness_without_listen_follows_the_last_full_read() -> None:
    follower = _follower(None)
    assert not follower.fresh(now=100.0)  # never read
    follower._read_at = 100.0
    assert follower.fresh(now=105.0)
    assert not follower.fresh(now=105.1)


def test_freshness_with_listen_needs_a_ping_and_a_read_since_the_connection() -> None:
    listener = SimpleNamespace(live=True, connected_at=50.0, last_alive=100.0)
    follower = _follower(listener)
    follower._read_at = 50.5  # the read the connection started
    assert follower.fresh(now=104.0)
    assert not follower.fresh(now=105.5)  # the ping stopped answering (a hung link)
    listener.last_alive, listener.connected_at = 200.0, 199.0  # reconnected: changes may have been missed
    assert not follower.fresh(now=200.5)
    follower._read_at = 199.5
    assert follower.fresh(now=200.5)
    listener.live = False
    assert not follower.fresh(now=206.0)


def test_route_index_is_not_needed_for_the_rule() -> None:
    # RouteIndex wraps the map; an unknown map refuses through it too (the index only adds routes).
    owners = _map()
    RouteIndex(owners)
    owners.set_known(False)
    assert _decide(owners, ALICE) is Outcome.FORBIDDEN
