"""The owner-only URL through REAL proxies reading kruise-game's own Ingress objects: the ingress-nginx
stand-in (nginx rendered from them, tests/plugins/ingress_nginx.py) and Traefik v3's kubernetesIngressNGINX
provider (the test bed's), with real pods' backends (aigc_testbed/podnet.py) that answer with their own
pod name and log every request. alice and bob each own an instance; the attacker is alice, signed in,
trying to reach bob's pod — so bob's pod must never appear in the pods' log."""
from __future__ import annotations

import json
import time

import pytest

from aigc_gateway.api.v1 import instance_pb2

from .conftest import raw, request
from .scene import COOKIE, install, publish, received

pytestmark = pytest.mark.testbed
PROXIES = ["nginx", "traefik"]
# The `rd` both proxies put on the sign-in redirect, as ingress-nginx's buildAuthSignURL:
# $pass_access_scheme://$http_host$escaped_request_uri (Traefik's provider reproduces it).
REDIRECT = "http://{host}:{port}%2Ftxt2img%3Fx%3D1"


@pytest.fixture
async def scene(request, make_scene):
    return await make_scene(request.param)


@pytest.mark.parametrize("scene", PROXIES, indirect=True)
async def test_owner_reaches_own_pod_others_and_paused_are_refused(scene, browser) -> None:
    alice = await install(scene, "alice")

    # Anonymous -> redirect to sign-in -> back at the instance URL -> 200 from alice's own pod.
    b = browser()
    hops = await b.sign_in(scene.url(alice.host, "/txt2img?x=1"), "alice")
    rd = REDIRECT.format(host=alice.host, port=scene.port)
    assert (hops[0].status, hops[0].location) == (
        302, f"http://dashboard.aigc.test:{scene.stack.front_port}/sign-in?rd={rd}")
    assert (hops[-1].url, hops[-1].status) == (scene.url(alice.host, "/txt2img?x=1"), 200)
    seen = json.loads(hops[-1].body)
    assert (seen["namespace"], seen["pod"], seen["path"]) == (scene.pods.namespace, alice.pod, "/txt2img?x=1")
    # auth-response-headers names the identity headers: the pod gets the auth service's values, once.
    assert [v for k, v in seen["headers"] if k.lower() == "x-auth-request-user"] == ["alice"]

    # Another signed-in user -> 403, and alice's pod saw no request of bob.
    before = len(scene.pods.records())
    assert (await scene.get(alice.host, user="bob")).status == 403
    assert len(scene.pods.records()) == before

    # Pause through the instance service -> denied (403 from the auth service); the latency is printed.
    await scene.instances.PauseInstance(instance_pb2.PauseInstanceRequest(name=alice.name),
                                        metadata=scene.meta("alice"))
    started = time.monotonic()
    while (reply := await scene.get(alice.host, user="alice")).status == 200:
        assert time.monotonic() - started < 30, "still admitted 30 s after the pause"
    print(f"{scene.proxy}: first refusal {time.monotonic() - started:.3f} s after PauseInstance returned")
    assert reply.status == 403

    # Sign-out -> the proxy sends the browser to sign in again (the auth service's 401).
    page = await b.request("GET", f"http://dashboard.aigc.test:{scene.stack.front_port}/sign-out")
    csrf = page.body.split('name="csrf" value="', 1)[1].split('"', 1)[0]
    await b.request("POST", f"http://dashboard.aigc.test:{scene.stack.front_port}/sign-out", data={"csrf": csrf})
    again = await b.request("GET", scene.url(alice.host))
    assert again.status == 302 and "/sign-in?rd=" in again.location


def attacks(alice, bob, port: int) -> list[tuple[str, bytes, int, int]]:
    """Requests by alice (signed in) that name bob's instance somewhere, with the one right status through
    nginx and through Traefik: 403 = the proxy routed to bob's host and /auth refused (the routed host `rh`
    disagrees with the URL, or alice does not own it); 404 = no server/router claims the host (the default
    backend); 400 = the proxy refuses the request as malformed. Measured, and each is a refusal."""
    a, b = alice.host, bob.host
    return [
        ("absolute-form request line names bob, Host names alice",
         request(f"http://{b}/", [("Host", f"{a}:{port}")]), 403, 403),
        ("absolute-form with port names bob", request(f"http://{b}:{port}/", [("Host", f"{a}:{port}")]), 403, 403),
        ("absolute-form in capitals names bob", request(f"http://{b.upper()}/", [("Host", a)]), 403, 403),
        ("absolute-form https names bob", request(f"https://{b}/", [("Host", a)]), 403, 403),
        # nginx refuses userinfo in the request line; Go (Traefik) routes on the host after the @.
        ("absolute-form with userinfo naming alice", request(f"http://{a}@{b}/", [("Host", a)]), 400, 403),
        ("HTTP/1.0 absolute-form without Host", request(f"http://{b}/", [], version="HTTP/1.0"), 403, 403),
        ("Host bob, forwarded headers claim alice",
         request("/", [("Host", b), ("X-Forwarded-Host", a), ("X-Original-URL", f"http://{a}/"),
                       ("X-Forwarded-Uri", "/"), ("X-Forwarded-Proto", "http"), ("X-Original-Host", a)]), 403, 403),
        ("duplicate Host headers", request("/", [("Host", a), ("Host", b)]), 400, 400),
        ("Host in capitals", request("/", [("Host", b.upper())]), 403, 403),
        ("Host with another port", request("/", [("Host", f"{b}:1")]), 403, 403),
        ("Host with an empty port", request("/", [("Host", f"{b}:")]), 403, 403),
        # nginx routes on the name before the first ':' and /auth refuses the URL; Traefik matches no router.
        ("Host with two ports", request("/", [("Host", f"{b}:{port}:{port}")]), 403, 404),
        ("Host with a trailing dot", request("/", [("Host", f"{b}.")]), 403, 403),
        ("Host percent-encoded", request("/", [("Host", b.replace("-", "%2D"))]), 404, 404),
        ("Host carries a second rh", request("/", [("Host", f"{b}&rh={a}")]), 404, 404),
        # Go refuses a non-ASCII Host; nginx has no server of that name.
        ("Host with a dotless i (IDN look-alike)", request("/", [("Host", b.replace("i", "\u0131", 1))]), 404, 400),
        ("Host in punycode of the look-alike", request("/", [("Host", "xn--nstances-" + b[9:])]), 404, 404),
    ]


@pytest.mark.parametrize("scene", PROXIES, indirect=True)
async def test_requests_naming_another_instance_never_reach_its_pod(scene) -> None:
    alice = await install(scene, "alice")
    bob = await install(scene, "bob")
    start = len(scene.pods.records())
    got, want = [], []
    for what, data, nginx, traefik in attacks(alice, bob, scene.port):
        reply = await raw(scene.port, data[:-4] + f"\r\nCookie: {COOKIE}={scene.cookies['alice']}\r\n\r\n".encode())
        got.append((what, reply.status))
        want.append((what, nginx if scene.proxy == "nginx" else traefik))
    assert got == want
    assert scene.pods.records()[start:] == [], "a refused request reached a pod"

    # Requests without a Host at all never reach any instance.
    assert (await raw(scene.port, b"GET / HTTP/1.0\r\n\r\n")).status == 404
    assert (await raw(scene.port, b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")).status == 400

    # The request line names alice's host and the Host header bob's: routed to alice's host. nginx's
    # X-Original-URL carries the Host header, which disagrees with the routed host: refused. Traefik's
    # X-Forwarded-Host is the routed host: alice reaches her own pod.
    reply = await raw(scene.port, request(f"http://{alice.host}/", [
        ("Host", bob.host), ("Cookie", f"{COOKIE}={scene.cookies['alice']}")]))
    if scene.proxy == "nginx":
        assert reply.status == 403 and scene.pods.records()[start:] == []
    else:
        assert (reply.status, received(reply)["pod"]) == (200, alice.pod)

    # Headers that disagree while the request is routed to alice's own host: her pod, never bob's, and
    # the identity headers are the auth service's (a client copy is replaced; an alias is dropped).
    reply = await scene.get(alice.host, user="alice", extra=[
        ("X-Forwarded-Host", bob.host), ("X-Original-URL", f"http://{bob.host}/"), ("X-Forwarded-Uri", "/"),
        ("X-Auth-Request-User", "bob"), ("X_Auth_Request_User", "bob"), ("X-Auth-Request-Email", "bob@x")])
    assert reply.status == 200
    seen = received(reply)
    assert seen["pod"] == alice.pod
    users = [(k, v) for k, v in seen["headers"] if k.lower().replace("_", "-") == "x-auth-request-user"]
    assert users == [("X-Auth-Request-User", "alice")]
    # Since the attacks began, only alice's own requests above reached a pod.
    assert {r["pod"] for r in scene.pods.records()[start:]} == {alice.pod}


PATH_TRICKS = [  # (what, request target with {a} alice's id and {b} bob's, status through nginx, Traefik)
    ("dot segments", "/sd{a}/../sd{b}/", 403, 403),
    ("encoded dot segments", "/sd{a}/%2e%2e/sd{b}/", 403, 403),
    # nginx decodes %2F before resolving dot segments (bob's location; /auth normalises the same way);
    # Traefik keeps %2F, so /sd{a}%2f... is no segment of any router's prefix.
    ("encoded slashes", "/sd{a}%2f..%2fsd{b}/", 403, 404),
    ("doubled slash", "//sd{b}/", 403, 403),
    ("single dot", "/./sd{b}/", 403, 403),
    ("bob's exact path", "/sd{b}", 403, 403),
    # nginx: the annotated default location "/" (auth first: no instance at /SD{b}); Traefik: no router.
    ("bob's path in capitals", "/SD{b}/", 403, 404),
    ("absolute-form naming bob's path", "http://apps-cpu.aigc.test/sd{b}/", 403, 403),
]


@pytest.mark.parametrize("scene", PROXIES, indirect=True)
async def test_path_tricks_on_a_path_routed_template_never_reach_another_pod(scene) -> None:
    await publish(scene, "sdp", "apps-cpu.aigc.test", "/sd<id>", "Prefix")
    alice = await install(scene, "alice", "sdp", "apps-cpu.aigc.test", "/sd<id>")
    bob = await install(scene, "bob", "sdp", "apps-cpu.aigc.test", "/sd<id>")
    start = len(scene.pods.records())
    got, want = [], []
    for what, target, nginx, traefik in PATH_TRICKS:
        target = target.format(a=alice.ident, b=bob.ident).replace("apps-cpu.aigc.test", alice.host)
        reply = await raw(scene.port, request(target, [("Host", f"{alice.host}:{scene.port}"),
                                                       ("Cookie", f"{COOKIE}={scene.cookies['alice']}")]))
        got.append((what, target, reply.status))
        want.append((what, target, nginx if scene.proxy == "nginx" else traefik))
    assert got == want
    assert scene.pods.records()[start:] == [], "a refused request reached a pod"
    reply = await scene.get(alice.host, f"/sd{alice.ident}/x", user="alice")
    assert (reply.status, received(reply)["pod"]) == (200, alice.pod)
    assert [r["pod"] for r in scene.pods.records()[start:]] == [alice.pod]
