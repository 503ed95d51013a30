"""Owner map and the decision: exact hosts, segment-bounded paths, and the attack table."""
from __future__ import annotations

import pytest

from aigc_gateway.identity import Principal
from aigc_gateway.services.auth.decision import Outcome, decide
from aigc_gateway.services.auth.ownermap import CONFLICT, InstanceKey, OwnerMap, Route
from aigc_gateway.services.auth.routes import (
    RoutePattern,
    instance_of,
    instance_routes,
    path_prefix,
    reported_routes,
    route_pattern,
)
from aigc_gateway.services.auth.urls import BadURL, parse_original_url

ALICE = Principal("alice", email="alice@aigc.test")
BOB = Principal("bob")
ADMIN = Principal("root", roles=("admin",), admin=True)
SERVICE = Principal("service:instance", kind="service", admin=True)

HOSTED = RoutePattern("instances<id>-cpu.aigc.test")
PATHED = RoutePattern("sd.aigc.test", ("/sd<id>",))


@pytest.fixture
def owners() -> OwnerMap:
    m = OwnerMap()
    for i, owner in ((1, "alice"), (2, "bob"), (3, None)):
        key = InstanceKey("ns", "cpu", i)
        m.set_routes(key, HOSTED.routes(i))
        m.set_owner(key, owner)
        pkey = InstanceKey("ns", "pathed", i)
        m.set_routes(pkey, PATHED.routes(i))
        m.set_owner(pkey, owner)
    return m


def check(url: str, principal, owners: OwnerMap, allow_admin: bool = False):
    try:
        target = parse_original_url(url)
    except BadURL:
        target = None
    return decide(target, principal, owners, allow_admin=allow_admin)


def test_owner_is_admitted(owners) -> None:
    d = check("https://instances1-cpu.aigc.test/", ALICE, owners)
    assert d.outcome is Outcome.ALLOW and d.instance == InstanceKey("ns", "cpu", 1)
    assert check("https://sd.aigc.test/sd1/run?x=1", ALICE, owners).allowed
    assert check("https://sd.aigc.test/sd1", ALICE, owners).allowed


def test_anonymous_is_401_and_others_403(owners) -> None:
    assert check("https://instances1-cpu.aigc.test/", None, owners).status == 401
    assert check("garbage", None, owners).status == 401
    assert check("https://instances1-cpu.aigc.test/", BOB, owners).status == 403
    assert check("https://nothing.aigc.test/", ALICE, owners).status == 403


def test_paused_instance_admits_nobody(owners) -> None:
    key = InstanceKey("ns", "cpu", 1)
    owners.set_owner(key, None)
    assert check("https://instances1-cpu.aigc.test/", ALICE, owners).status == 403
    owners.set_owner(key, "alice")
    assert check("https://instances1-cpu.aigc.test/", ALICE, owners).allowed


def test_admin_only_when_configured(owners) -> None:
    assert check("https://instances1-cpu.aigc.test/", ADMIN, owners).status == 403
    assert check("https://instances1-cpu.aigc.test/", ADMIN, owners, allow_admin=True).allowed
    assert check("https://instances1-cpu.aigc.test/", SERVICE, owners, allow_admin=True).status == 403


# Alice owns instance 1; every URL below is instance 2's (bob's) or not an instance at all.
ATTACKS = [
    "https://instances2-cpu.aigc.test/?next=https://instances1-cpu.aigc.test/",
    "https://instances2-cpu.aigc.test/instances1-cpu.aigc.test",
    "https://instances2-cpu.aigc.test/#instances1-cpu.aigc.test",
    "https://instances1-cpu.aigc.test@instances2-cpu.aigc.test/",
    "https://instances2-cpu.aigc.test@instances1-cpu.aigc.test/",
    "https://INSTANCES2-CPU.aigc.test/", "https://instances2-cpu.aigc.test./", "https://instances2-cpu.aigc.test:443/",
    "https://instances2%2Dcpu.aigc.test/", "https://ｉnstances2-cpu.aigc.test/", "https://instances2-cpu.aigc.test%2e/",
    "https://instances1-cpu.aigc.test.instances2-cpu.aigc.test/",
    "https://instances2-cpu.aigc.test.instances1-cpu.aigc.test/",
    "https://instances1-cpu.aigc.test?/instances2",
    "https://sd.aigc.test/sd1/../sd2/", "https://sd.aigc.test/sd1/%2e%2e/sd2", "https://sd.aigc.test/sd1%2f..%2fsd2",
    "https://sd.aigc.test//sd2", "https://sd.aigc.test/sd2?/sd1", "https://sd.aigc.test/sd2#/sd1",
    "https://sd.aigc.test/sd10", "https://sd.aigc.test/sd1x", "https://sd.aigc.test/", "https://sd.aigc.test/sd2/sd1",
    "https://sd.aigc.test/./sd2/../../sd1", "https://sd.aigc.test/x/%2e%2e/sd2",
]


@pytest.mark.parametrize("url", ATTACKS)
def test_attacks_are_denied(owners, url: str) -> None:
    assert check(url, ALICE, owners).status == 403


def test_path_routing_follows_nginx_normalisation(owners) -> None:
    # nginx routes these to /sd1 after normalisation, so they are alice's.
    for url in ("https://sd.aigc.test/sd2/../sd1/x", "https://sd.aigc.test//sd1//x", "https://sd.aigc.test/%73d1/"):
        assert check(url, ALICE, owners).allowed, url


def test_conflicting_claims_admit_nobody() -> None:
    m = OwnerMap()
    shared = RoutePattern("shared.aigc.test")
    a, b = InstanceKey("ns", "t", 1), InstanceKey("ns", "t", 2)
    m.set_routes(a, shared.routes(1))
    m.set_routes(b, shared.routes(2))
    m.set_owner(a, "alice")
    assert m.lookup("shared.aigc.test", "/") is CONFLICT
    assert check("https://shared.aigc.test/", ALICE, m).status == 403
    m.drop_routes(b)
    assert check("https://shared.aigc.test/", ALICE, m).allowed
    m.drop_routes(a)
    assert m.lookup("shared.aigc.test", "/") is None and len(m) == 0


def test_longest_prefix_wins() -> None:
    m = OwnerMap()
    outer, inner = InstanceKey("ns", "t", 1), InstanceKey("ns", "u", 1)
    m.set_routes(outer, {Route("h.aigc.test", "/")})
    m.set_routes(inner, {Route("h.aigc.test", "/app")})
    assert m.lookup("h.aigc.test", "/app/x") == inner
    assert m.lookup("h.aigc.test", "/apps") == outer
    m.set_routes(inner, {Route("h.aigc.test", "/other")})
    assert m.lookup("h.aigc.test", "/app/x") == outer


GSS = {"metadata": {"name": "cpu", "namespace": "ns"},
       "spec": {"network": {"networkType": "Kubernetes-Ingress", "networkConf": [
           {"name": "Host", "value": "instances<id>-cpu.aigc.test"}, {"name": "Path", "value": "/"},
           {"name": "Annotation", "value": "nginx.ingress.kubernetes.io/auth-url: https://d/auth"}]}}}


def test_route_pattern_from_template() -> None:
    pattern = route_pattern(GSS)
    assert pattern == RoutePattern("instances<id>-cpu.aigc.test", ("/",))
    assert pattern.routes(7) == {Route("instances7-cpu.aigc.test", "/")}
    assert route_pattern({"spec": {"network": {"networkType": "Kubernetes-HostPort"}}}) is None
    regex = RoutePattern("g.aigc.test", ("/game<id>(/|$)(.*)",))
    assert regex.routes(3) == {Route("g.aigc.test", "/game3")}
    assert path_prefix("/a/") == "/a" and path_prefix("(.*)") == "/" and path_prefix("/a/../..") == "/"


def test_reported_endpoint_wins_over_pattern() -> None:
    gs = {"metadata": {"name": "cpu-4", "namespace": "ns", "labels": {"game.kruise.io/owner-gss": "cpu"}},
          "status": {"networkStatus": {"externalAddresses": [
              {"endPoint": "Real4.aigc.test", "ports": [{"name": "/", "port": 7860}]}]}}}
    assert instance_of(gs) == InstanceKey("ns", "cpu", 4)
    assert reported_routes(gs) == {Route("real4.aigc.test", "/")}
    assert instance_routes(route_pattern(GSS), 4, gs) == {Route("real4.aigc.test", "/")}
    assert instance_routes(route_pattern(GSS), 4, {"status": {}}) == {Route("instances4-cpu.aigc.test", "/")}
    assert instance_of({"metadata": {"name": "other-4", "labels": {"game.kruise.io/owner-gss": "cpu"}}}) is None
