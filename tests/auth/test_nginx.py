"""End to end through real nginx configured as ingress-nginx renders auth-url/auth-signin, with the
real oidc-provider and a tiny backend per instance. Routes are fed into the route index directly
(tests/auth/test_testbed.py takes them from the Kubernetes test bed instead)."""
from __future__ import annotations

import asyncio
import time

import pytest

from aigc_gateway.services.auth.routes import RoutePattern
from tests.plugins.auth_stack import InstanceSite, free_port, nginx_servers

from .stack import DOMAIN, start_auth_stack

COOKIE = "aigc_session"
H1, H2, SD = f"instances1-cpu.{DOMAIN}", f"instances2-cpu.{DOMAIN}", f"sd.{DOMAIN}"


@pytest.fixture
async def site(start_gateway, start_oidc_provider, start_nginx, start_backend, database_url, issuer):
    port = free_port()
    # Two HTTP worker processes, as production runs them: routes fed here reach them through the parent.
    stack = await start_auth_stack(start_gateway=start_gateway, start_oidc_provider=start_oidc_provider,
                                   database_url=database_url, issuer=issuer, front_port=port, http_workers=2)
    stack.service.index.set_template("ns", "cpu", RoutePattern(f"instances<id>-cpu.{DOMAIN}"))
    stack.service.index.set_template("ns", "pathed", RoutePattern(SD, ("/sd<id>",)))
    backends = {name: await start_backend(name) for name in ("cpu-1", "cpu-2", "sd-1", "sd-2")}
    servers = nginx_servers(
        listen=f"127.0.0.1:{port}", auth_addr=f"127.0.0.1:{stack.auth_port}",
        signin_url=f"http://dashboard.{DOMAIN}:{port}/sign-in", dashboard_host=f"dashboard.{DOMAIN}",
        sites=[InstanceSite(H1, {"/": backends["cpu-1"]}), InstanceSite(H2, {"/": backends["cpu-2"]}),
               InstanceSite(SD, {"/sd1": backends["sd-1"], "/sd2": backends["sd-2"]})])
    await start_nginx(port, servers)
    for template, ident, owner in (("cpu", 1, "alice"), ("cpu", 2, "bob"), ("pathed", 1, "alice"),
                                   ("pathed", 2, "bob")):
        await stack.set_instance(template, ident, "LIVE", owner)
    await stack.wait_owner("pathed", 2, "bob")
    yield stack
    await stack.db.close()


async def test_owner_scenario_through_nginx(site, browser) -> None:
    alice = browser()
    # Anonymous: nginx turns the 401 into a redirect to sign-in with rd = the instance URL.
    target = site.url(H1, "/gallery?page=2")
    hops = await alice.sign_in(target, "alice")
    assert hops[0].status == 302
    assert hops[0].location.startswith(f"http://dashboard.{DOMAIN}:{site.front_port}/sign-in?rd=")
    assert any(h.url.startswith(site.provider.issuer + "/auth") for h in hops)
    final = hops[-1]
    assert (final.url, final.status) == (target, 200)
    assert '"backend": "cpu-1"' in final.body and '"user": "alice"' in final.body
    assert '"path": "/gallery?page=2"' in final.body

    # Another user: 403 from the ingress, no redirect loop.
    bob = browser()
    await bob.sign_in(site.url(H2), "bob")
    assert (await bob.request("GET", site.url(H1))).status == 403
    assert (await bob.request("GET", site.url(H2))).status == 200

    # The owner pauses: refused from then on (the 1 s promise is measured and printed, not a bar).
    await site.set_instance("cpu", 1, "PAUSED", "alice")
    started = time.monotonic()
    while (await alice.request("GET", site.url(H1))).status == 200:
        assert time.monotonic() - started < 30, "still admitted 30 s after the pause"
        await asyncio.sleep(0.02)
    print(f"nginx: first refusal {time.monotonic() - started:.3f} s after the pause was committed (promise: 1 s)")
    assert (await alice.request("GET", site.url(H1))).status == 403
    await site.set_instance("cpu", 1, "LIVE", "alice")
    await site.wait_owner("cpu", 1, "alice")
    assert (await alice.request("GET", site.url(H1))).status == 200

    # Sign-out: the cookie is revoked server-side; the instance sends the browser to sign in again.
    page = await alice.request("GET", site.url(f"dashboard.{DOMAIN}", "/sign-out"))
    csrf = page.body.split('name="csrf" value="', 1)[1].split('"', 1)[0]
    stolen = alice.cookie(COOKIE)
    out = await alice.request("POST", site.url(f"dashboard.{DOMAIN}", "/sign-out"), data={"csrf": csrf})
    assert out.status == 303
    again = await alice.request("GET", site.url(H1))
    assert again.status == 302 and "/sign-in?rd=" in again.location
    replay = browser()  # the old cookie value, replayed from elsewhere, is dead too
    replayed = await replay.request("GET", site.url(H1), headers={"Cookie": f"{COOKIE}={stolen}"})
    assert replayed.status == 302 and "/sign-in?rd=" in replayed.location


async def test_attacks_through_nginx(site, browser) -> None:
    alice = browser()
    await alice.sign_in(site.url(H1), "alice")
    port = site.front_port
    denied = [
        site.url(H2, f"/?next=http://{H1}/"), site.url(H2, f"/{H1}"),
        site.url(SD, "/sd1/../sd2/"), site.url(SD, "/sd1/%2e%2e/sd2/x"), site.url(SD, "//sd2"),
        site.url(SD, "/sd2?/sd1"), site.url(SD, "/sd2/sd1"), site.url(SD, "/./sd2/"),
    ]
    for url in denied:
        hop = await alice.request("GET", url)
        assert hop.status == 403, (url, hop.status, hop.body[:200])
    for url in (site.url(SD, "/sd1/x"), site.url(SD, "/sd2/../sd1/"), site.url(SD, "//sd1//x")):
        hop = await alice.request("GET", url)
        assert hop.status == 200 and '"backend": "sd-1"' in hop.body, url
    # Host header variants of the victim's host: nginx routes them to the victim, we refuse.
    mine = {"Cookie": f"{COOKIE}={alice.cookie(COOKIE)}"}  # sent by hand: the URL's host is 127.0.0.1
    assert (await alice.request("GET", f"http://127.0.0.1:{port}/", headers={"Host": H1, **mine})).status == 200
    for host in (H2.upper(), H2 + ".", f"{H2}:{port}", f"{H2.upper()}.:{port}"):
        hop = await alice.request("GET", f"http://127.0.0.1:{port}/", headers={"Host": host, **mine})
        assert hop.status == 403, host
    # Hosts that smuggle the owner's name reach no instance at all (nginx's catch-all answers).
    for host in (f"{H1}@{H2}", f"{H2}@{H1}", f"{H1}.{H2}", f"xn--{H2}"):
        hop = await alice.request("GET", f"http://127.0.0.1:{port}/", headers={"Host": host, **mine})
        assert hop.status == 404, (host, hop.status)
        assert '"backend"' not in hop.body
    # Forged cookies and client-sent identity headers change nothing.
    mallory = browser()
    hop = await mallory.request("GET", site.url(H1), headers={
        "Cookie": f"{COOKIE}=eyJzIjoiYSIsInUiOiJhbGljZSIsImUiOjk5OTk5OTk5OTl9.Zm9yZ2Vk",
        "X-Auth-Request-User": "alice", "X-Original-URL": f"http://{H2}/", "X-Forwarded-Host": H1})
    assert hop.status == 302 and "/sign-in?rd=" in hop.location
    # Alice's own requests with spoofed headers: still decided on the URL nginx routed.
    hop = await alice.request("GET", site.url(H2), headers={"X-Original-URL": f"http://{H1}/",
                                                            "X-Forwarded-Host": H1, "X-Forwarded-Uri": "/"})
    assert hop.status == 403
    hop = await alice.request("GET", site.url(H1), headers={"X-Auth-Request-User": "bob"})
    assert hop.status == 200 and '"user": "alice"' in hop.body


@pytest.mark.parametrize("rd", ["https://evil.test/", "//evil.test/x", "javascript:alert(1)",
                                "http://instances1-cpu.aigc.test.evil.test/"])
async def test_sign_in_through_nginx_never_leaves_the_domain(site, browser, rd: str) -> None:
    b = browser()
    from urllib.parse import quote
    hops = await b.sign_in(site.url(f"dashboard.{DOMAIN}", "/sign-in?rd=" + quote(rd, safe="")), "alice")
    back = next(h for h in hops if "/sign-in-callback" in h.url)
    assert back.location == f"http://dashboard.{DOMAIN}:{site.front_port}/"


# -- issue 11: the decision is bound to the host nginx routed on ------------------------------------


async def raw(port: int, request: bytes) -> tuple[int, bytes]:
    """One request sent byte for byte (absolute-form lines, duplicate or missing Host): (status, body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        response = await asyncio.wait_for(reader.read(), 10)  # every request here ends the connection
    finally:
        writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def request(line: str, *headers: str) -> bytes:
    return (line + "\r\n" + "".join(h + "\r\n" for h in (*headers, "Connection: close")) + "\r\n").encode()


def reached(backends, name: str) -> int:
    return len(backends.seen[name])


async def test_absolute_form_request_line_cannot_borrow_the_owners_host(site, browser, start_backend) -> None:
    """The bypass of issue 11: nginx routes on the request line's host, X-Original-URL carries the Host header."""
    alice = browser()
    await alice.sign_in(site.url(H1), "alice")
    mine, port = f"Cookie: {COOKIE}={alice.cookie(COOKIE)}", site.front_port
    before = {name: reached(start_backend, name) for name in start_backend.seen}
    attacks = [
        # bob's host in the request line, alice's in Host: nginx would serve bob's cpu-2.
        request(f"GET http://{H2}/ HTTP/1.1", f"Host: {H1}", mine),
        request(f"GET http://{H2}:{port}/x HTTP/1.1", f"Host: {H1}:{port}", mine),
        request(f"GET http://{H2.upper()}./ HTTP/1.1", f"Host: {H1}", mine),
        # Path-routed: bob's /sd2 on sd.<domain> named in the request line, alice's host in Host.
        request(f"GET http://{SD}/sd2/ HTTP/1.1", f"Host: {H1}", mine),
        # and alice's /sd1 path sent to bob's host-routed instance.
        request(f"GET http://{H2}/sd1/ HTTP/1.1", f"Host: {SD}", mine),
        # Client-set X-Original-URL / X-Forwarded-Host naming alice's host: nginx overwrites or ignores them.
        request(f"GET http://{H2}/ HTTP/1.1", f"Host: {H2}", mine, f"X-Original-URL: http://{H1}/",
                f"X-Forwarded-Host: {H1}", "X-Forwarded-Uri: /"),
        request("GET / HTTP/1.1", f"Host: {H2}", mine, f"X-Original-URL: http://{H1}/",
                f"X-Original-URL: http://{H1}/", f"X-Forwarded-Host: {H1}"),
        # HTTP/1.0 without Host, request line naming bob's host: X-Original-URL has no host at all.
        request(f"GET http://{H2}/ HTTP/1.0", mine),
    ]
    for attack in attacks:
        status, body = await raw(port, attack)
        assert status == 403, (attack, status, body[:200])
        assert b'"backend"' not in body
    # Alice's own instance through the same channels, when they agree: admitted.
    for honest in (request(f"GET http://{H1}/ HTTP/1.1", f"Host: {H1}", mine),
                   request(f"GET http://{H1}:{port}/ HTTP/1.1", f"Host: {H1.upper()}.:{port}", mine)):
        status, body = await raw(port, honest)
        assert status == 200 and b'"backend": "cpu-1"' in body, (honest, status, body[:200])
    # The request line decides the route, and it never reached a pod alice does not own.
    after = {name: reached(start_backend, name) for name in start_backend.seen}
    assert {name: after[name] - before[name] for name in after} == {"cpu-1": 2, "cpu-2": 0, "sd-1": 0, "sd-2": 0}


async def test_malformed_host_information_reaches_no_backend(site, browser, start_backend) -> None:
    alice = browser()
    await alice.sign_in(site.url(H1), "alice")
    mine, port = f"Cookie: {COOKIE}={alice.cookie(COOKIE)}", site.front_port
    before = {name: reached(start_backend, name) for name in start_backend.seen}
    # nginx itself refuses two Host headers.
    assert (await raw(port, request("GET / HTTP/1.1", f"Host: {H1}", f"Host: {H2}", mine)))[0] == 400
    assert (await raw(port, request("GET / HTTP/1.1", f"Host: {H2}", f"Host: {H1}", mine)))[0] == 400
    # HTTP/1.0 without Host: the catch-all server, no instance.
    assert (await raw(port, request("GET / HTTP/1.0", mine)))[0] == 404
    # HTTP/1.0 absolute-form for alice's own host without a Host header: no Host to read, refused.
    assert (await raw(port, request(f"GET http://{H1}/ HTTP/1.0", mine)))[0] == 403
    # Percent-escaped and Unicode spellings of a host route to no server at all.
    for host in ("instances2%2dcpu.aigc.test", "ｉnstances2-cpu.aigc.test", "instances2-cpu.aigc.test..",
                 f"{H1}%00"):
        status, body = await raw(port, request("GET / HTTP/1.1", f"Host: {host}", mine))
        assert (host, status) == (host, 404 if ".." not in host else 400), body[:200]
    after = {name: reached(start_backend, name) for name in start_backend.seen}
    assert after == before


async def test_identity_headers_reach_the_backend_only_from_the_auth_answer(site, browser, start_backend) -> None:
    alice = browser()
    await alice.sign_in(site.url(H1), "alice")
    mine, port = f"Cookie: {COOKIE}={alice.cookie(COOKIE)}", site.front_port
    status, _ = await raw(port, request("GET /who HTTP/1.1", f"Host: {H1}", mine, "X-Auth-Request-User: bob",
                                        "X-Auth-Request-User: root", "X-Auth-Request-Email: bob@evil.test"))
    assert status == 200
    last = start_backend.seen["cpu-1"][-1]
    assert last["path"] == "/who"
    assert sorted(last["identity"]) == [("X-Auth-Request-Email", "alice@example.test"),
                                        ("X-Auth-Request-User", "alice")]
    # Anonymous with forged identity headers: sent to sign in, the backend never sees the request.
    count = reached(start_backend, "cpu-1")
    status, _ = await raw(port, request("GET / HTTP/1.1", f"Host: {H1}", "X-Auth-Request-User: alice"))
    assert status == 302 and reached(start_backend, "cpu-1") == count
