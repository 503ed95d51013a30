"""Attacks on the owner-only URL that test_owner_only.py does not make, through both real proxies (the
ingress-nginx stand-in rendered from kruise-game's Ingress objects, and the test bed's Traefik), in one
scene per proxy: alice (signed in) or an anonymous client against bob's instances of a host-routed and
of a path-routed template. Each request gets its one status per proxy (403: routed to bob and refused by
/auth; 404: no server or router claims it; 400: the proxy refuses it as malformed; 302: sent to sign in)
and bob's pod receives nothing: the pods' log shows only the requests a probe means to reach alice's pod.

Groups: request lines and Host headers (absolute-form spellings, IPv6 literals, whitespace, folding,
commas), forwarded headers on a path-routed template (`X-Forwarded-Uri`/`X-Original-URL`/`X-Rewrite-URL`
naming alice's path), path spellings (`;` parameters, double encoding, backslashes, NUL, a query or
fragment naming alice), methods and bodies (HEAD, OPTIONS, POST, `Expect: 100-continue`, CONNECT),
several requests on one connection (pipelining, CL+TE and obfuscated Transfer-Encoding smuggling a
request for bob behind one for alice), WebSocket upgrades, and cookies (two session cookies, a cookie
name in capitals, an oversized Cookie header), and HTTP/2 in the clear (Traefik). A refusal's body through Traefik (which passes /auth's on)
says nothing about what runs at the URL.

The second test changes owners: a user deleted in Logto (usersync's User.Deleted) loses her sessions, and
one made after the deletion resumes her orphaned instance but is refused at its URL; an uninstalled id goes
to another user (same host, same pod name) and its old owner is refused at once."""
from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import grpc
import pytest
from kubernetes_asyncio import client

from aigc_gateway.api.v1 import instance_pb2
from aigc_gateway.services.usersync.userdeleted import UserDeletedPolicy
from aigc_gateway.sessions import SessionCookie, SessionStore
from tests.plugins.kube import api_client, wait_for

from .conftest import raw, request
from .scene import COOKIE, Instance, Scene, install, publish, received
from .test_owner_only import PROXIES, scene  # noqa: F401 - the fixture

pytestmark = pytest.mark.testbed
PATH_HOST = "apps-cpu.aigc.test"
NGINX_403 = (b"<html>\r\n<head><title>403 Forbidden</title></head>\r\n<body>\r\n<center><h1>403 Forbidden</h1>"
             b"</center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n")


async def exchange(port: int, data: bytes, method: str, expect: int, timeout: float = 10) -> list[int | str]:
    """Send ``data`` (one or several requests) and return the status of each response until ``expect``
    of them are complete or the proxy closes the connection (bodies by Content-Length or chunked are
    skipped, not parsed); "open" after them when the proxy neither answered that many nor closed."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    buf, statuses = b"", []
    try:
        writer.write(data)
        await writer.drain()
        while len(statuses := _statuses(buf, method)) < expect:
            chunk = await asyncio.wait_for(reader.read(65536), timeout)
            if not chunk:
                return _statuses(buf, method, final=True)
            buf += chunk
    except TimeoutError:
        return [*statuses, "open"]
    finally:
        writer.close()
    return statuses


def _statuses(buf: bytes, method: str, final: bool = False) -> list[int | str]:
    """The statuses of the complete responses in ``buf`` (``final``: the connection ended, so a body
    without a length ends with it)."""
    statuses: list[int | str] = []
    while buf.startswith(b"HTTP/") and b"\r\n\r\n" in buf:
        head, _, rest = buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        fields = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:] if ":" in line)}
        if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
            buf = rest
        elif fields.get("transfer-encoding", "").lower() == "chunked":
            if rest.startswith(b"0\r\n\r\n"):
                buf = rest[5:]
            elif (end := rest.find(b"\r\n0\r\n\r\n")) >= 0:
                buf = rest[end + 7:]
            else:
                break
        elif "content-length" in fields:
            if len(rest) < int(fields["content-length"]):
                break
            buf = rest[int(fields["content-length"]):]
        elif final:
            buf = b""
        else:
            break  # the body runs to the end of the connection
        statuses.append(status)
    return statuses


async def h2c(port: int, host: str, cookie: str) -> str:
    """HTTP version and status of a GET over HTTP/2 with prior knowledge (curl: `Host` becomes `:authority`)."""
    proc = await asyncio.create_subprocess_exec(
        "curl", "-s", "-o", "/dev/null", "-w", "%{http_version} %{http_code}", "--http2-prior-knowledge",
        "-H", f"Host: {host}", "-H", f"Cookie: {cookie}", f"http://127.0.0.1:{port}/",
        stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    return out.decode()


def host_probes(a: str, b: str, port: int, cookie: str, other: str) -> list[tuple[str, bytes, list[int], list[int]]]:
    """(what, bytes, statuses through nginx, statuses through Traefik): alice (``cookie``) naming bob's
    host-routed instance. The bytes end their connection (HTTP/1.0, ``Connection: close``, or a last
    request that asks for it)."""
    c = ("Cookie", cookie)
    keep = ("Connection", "keep-alive")

    def crlf(text: str) -> bytes:
        return text.replace("\n", "\r\n").encode()

    return [
        # -- request lines and Host headers
        ("absolute-form, scheme in capitals", request(f"HTTP://{b}/", [("Host", a), c]), [403], [403]),
        ("absolute-form, trailing dot", request(f"http://{b}./", [("Host", a), c]), [403], [403]),
        ("absolute-form, userinfo and port", request(f"http://{a}:x@{b}:{port}/", [("Host", a), c]), [400], [403]),
        ("absolute-form, IPv6 literal", request("http://[::1]/", [("Host", b), c]), [404], [404]),
        ("absolute-form with no path", request(f"http://{b}", [("Host", a), c]), [403], [403]),
        ("Host an IPv6 literal", request("/", [("Host", "[::1]"), c]), [404], [404]),
        ("Host an IPv6 literal with port", request("/", [("Host", f"[::1]:{port}"), c]), [404], [404]),
        ("Host with spaces around", crlf(f"GET / HTTP/1.1\nHost:   {b}  \nCookie: {cookie}\nConnection: close\n\n"),
         [403], [403]),
        ("Host with a tab inside", request("/", [("Host", f"{b}\t{a}"), c]), [400], [400]),
        ("Host with a space inside", request("/", [("Host", f"{b} {a}"), c]), [400], [400]),
        ("Host naming both, comma", request("/", [("Host", f"{b},{a}"), c]), [404], [404]),
        ("space before the colon", crlf(f"GET / HTTP/1.1\nHost : {a}\nHost: {b}\nCookie: {cookie}\n"
                                       "Connection: close\n\n"), [400], [400]),
        ("obsolete line folding", crlf(f"GET / HTTP/1.1\nHost: {b}\n {a}\nCookie: {cookie}\nConnection: close\n\n"),
         [400], [400]),
        ("HTTP/1.0 with bob's Host", request("/", [("Host", b), c], version="HTTP/1.0"), [403], [403]),
        ("Host bob, Forwarded and X-Rewrite-URL claim alice",
         request("/", [("Host", b), ("Forwarded", f"host={a}"), ("X-Rewrite-URL", f"http://{a}/"),
                       ("X-Original-URI", "/"), ("X-Forwarded-Prefix", "/"), ("X-Host", a), c]), [403], [403]),
        # -- methods and bodies
        ("HEAD", request("/", [("Host", b), c], method="HEAD"), [403], [403]),
        ("OPTIONS", request("/", [("Host", b), c], method="OPTIONS"), [403], [403]),
        # Go's server answers `OPTIONS *` itself (200, empty), before any router.
        ("OPTIONS *", request("*", [("Host", b), c], method="OPTIONS"), [400], [200]),
        ("POST with a body", crlf(f"POST / HTTP/1.1\nHost: {b}\nCookie: {cookie}\nContent-Length: 5\n"
                                 "Connection: close\n\nhello"), [403], [403]),
        ("POST with Expect: 100-continue", crlf(f"POST / HTTP/1.1\nHost: {b}\nCookie: {cookie}\nContent-Length: 5\n"
                                               "Expect: 100-continue\nConnection: close\n\nhello"), [403], [403]),
        ("CONNECT to bob", request(f"{b}:{port}", [("Host", f"{b}:{port}"), c], method="CONNECT"), [400], [501]),
        # -- several requests on one connection
        ("pipelined: alice's host, then bob's",
         request("/", [("Host", a), c, keep]) + request("/", [("Host", b), c]), [200, 403], [200, 403]),
        ("CL and TE: a request for bob smuggled in alice's body",
         crlf(f"POST / HTTP/1.1\nHost: {a}\nCookie: {cookie}\nContent-Length: 4\nTransfer-Encoding: chunked\n\n"
             f"0\n\nGET / HTTP/1.1\nHost: {b}\nCookie: {cookie}\nConnection: close\n\n"), [400], [200, 403]),
        ("TE with a space before the colon",
         crlf(f"POST / HTTP/1.1\nHost: {a}\nCookie: {cookie}\nTransfer-Encoding : chunked\nContent-Length: 5\n\n"
             f"0\n\nGET / HTTP/1.1\nHost: {b}\nConnection: close\n\n"), [400], [400]),
        ("TE xchunked", crlf(f"POST / HTTP/1.1\nHost: {a}\nCookie: {cookie}\nTransfer-Encoding: xchunked\n"
                            f"Content-Length: 5\n\n0\n\nGET / HTTP/1.1\nHost: {b}\nConnection: close\n\n"),
         [501], [501]),
        ("TE chunked twice", crlf(f"POST / HTTP/1.1\nHost: {a}\nCookie: {cookie}\nTransfer-Encoding: chunked\n"
                                 f"Transfer-Encoding: chunked\n\n0\n\nGET / HTTP/1.1\nHost: {b}\n"
                                 "Connection: close\n\n"), [400], [501]),
        # -- WebSocket
        ("WebSocket upgrade to bob",
         request("/ws", [("Host", b), c, ("Connection", "Upgrade"), ("Upgrade", "websocket"),
                         ("Sec-WebSocket-Version", "13"), ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")]),
         [403], [403]),
        ("anonymous WebSocket upgrade to bob",
         request("/ws", [("Host", b), ("Connection", "Upgrade"), ("Upgrade", "websocket"),
                         ("Sec-WebSocket-Version", "13"), ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")]),
         [302], [302]),
        # -- cookies
        ("cookie name in capitals", request("/", [("Host", b), ("Cookie", cookie.replace(COOKIE, COOKIE.upper()))]),
         [302], [302]),
        ("two session cookies, alice's and bob's", request("/", [("Host", b), ("Cookie", f"{cookie}; {other}")]),
         [302], [302]),
        ("an oversized Cookie header beside alice's", request("/", [("Host", b), ("Cookie", "x=" + "y" * 9000),
                                                                    c]), [400], [403]),
    ]


def path_probes(a: int, b: int, host: str, cookie: str) -> list[tuple[str, bytes, list[int], list[int]]]:
    """Alice naming bob's instance of the path-routed template (``/sd<id>``)."""
    c = ("Cookie", cookie)
    hb = ("Host", host)
    mine = f"http://{host}/sd{a}/"
    return [
        # -- the proxy's own headers claiming alice's path while the request line names bob's
        ("X-Forwarded-Uri and X-Original-URL name alice's path",
         request(f"/sd{b}/", [hb, ("X-Forwarded-Uri", f"/sd{a}/"), ("X-Original-URL", mine),
                              ("X-Forwarded-Host", host), ("X-Forwarded-Prefix", f"/sd{a}"),
                              ("X-Rewrite-URL", f"/sd{a}/"), ("X-Original-URI", f"/sd{a}/"), c]), [403], [403]),
        ("absolute-form names alice's path in its host", request(f"http://{host}/sd{b}/",
                                                                 [("Host", f"{host}/sd{a}"), c]), [400], [400]),
        # -- path spellings
        # A Prefix path matches by segments in both: nginx's default location (/auth: no instance there),
        # no Traefik router.
        ("alice's id with more digits", request(f"/sd{a}{b}/", [hb, c]), [403], [404]),
        ("a ;parameter on bob's path", request(f"/sd{b};x=1/", [hb, c]), [403], [404]),
        # `..;` is no dot segment for either proxy (nor for /auth): alice's own path, her own pod.
        ("..; after alice's path", request(f"/sd{a}/..;/sd{b}/", [hb, c]), [200], [200]),
        ("; then .. after alice's path", request(f"/sd{a};/../sd{b}/", [hb, c]), [403], [403]),
        ("%2E%2E in capitals", request(f"/sd{a}/%2E%2E/sd{b}/", [hb, c]), [403], [403]),
        (".%2e mixed", request(f"/sd{a}/.%2e/sd{b}/", [hb, c]), [403], [403]),
        # Decoded once, `%2e%2e` is no dot segment: alice's path (nginx: her pod); /auth refuses `%25` behind
        # Traefik, which may route on either form.
        ("double-encoded dots", request(f"/sd{a}/%252e%252e/sd{b}/", [hb, c]), [200], [403]),
        ("backslashes", request(f"/sd{a}\\..\\sd{b}/", [hb, c]), [403], [404]),
        ("encoded backslashes", request(f"/sd{a}%5c..%5csd{b}/", [hb, c]), [403], [404]),
        ("an encoded NUL", request(f"/sd{a}/%00/../../sd{b}/", [hb, c]), [400], [403]),
        ("the query names alice's path", request(f"/sd{b}/?/sd{a}/", [hb, c]), [403], [403]),
        ("a fragment names alice's path", request(f"/sd{b}/#/sd{a}/", [hb, c]), [403], [400]),
        ("absolute-form with dot segments", request(f"http://{host}/sd{a}/../sd{b}/", [hb, c]), [403], [403]),
    ]


@pytest.mark.parametrize("scene", PROXIES, indirect=True)
async def test_attacks_on_another_users_instance_reach_no_pod(scene) -> None:
    await publish(scene, "sdp", PATH_HOST, "/sd<id>", "Prefix")
    alice, bob = await install(scene, "alice"), await install(scene, "bob")
    palice = await install(scene, "alice", "sdp", PATH_HOST, "/sd<id>")
    pbob = await install(scene, "bob", "sdp", PATH_HOST, "/sd<id>")
    cookie = f"{COOKIE}={scene.cookies['alice']}"
    probes = host_probes(alice.host, bob.host, scene.port, cookie,
                         f"{COOKIE}={scene.cookies['bob']}") + path_probes(
        palice.ident, pbob.ident, palice.host, cookie)
    start = len(scene.pods.records())
    got, want, reached = [], [], []
    for what, data, nginx, traefik in probes:
        before = len(scene.pods.records())
        method = data.split(b" ", 1)[0].decode()
        expected = nginx if scene.proxy == "nginx" else traefik
        got.append((what, await exchange(scene.port, data, method, len(expected))))
        want.append((what, expected))
        reached += [(what, r["pod"]) for r in scene.pods.records()[before:]]
    assert got == want
    # A pod hears only the probes answered 200, each once and always alice's own: a first request naming her
    # host, or a path that is hers for the proxy and /auth alike (Traefik's 200 to `OPTIONS *` is its own).
    mine = {"pipelined: alice's host, then bob's": alice.pod, "..; after alice's path": palice.pod,
            "CL and TE: a request for bob smuggled in alice's body": alice.pod, "double-encoded dots": palice.pod}
    assert reached == [(what, mine[what]) for what, statuses in want if 200 in statuses and what in mine]
    assert [r["pod"] for r in scene.pods.records()[start:]] == [p for _, p in reached]

    # A refusal says nothing about what runs at the URL: Traefik hands /auth's 403 body to the client, which
    # said "you do not own this instance" (another user's running instance) or "not a valid instance URL".
    refusals = [(bob.host, "/"), (palice.host, f"/sd{pbob.ident}/")]
    if scene.proxy == "traefik":  # /auth refuses `%25` there (nginx routes it to alice's own pod, above)
        refusals.append((palice.host, f"/sd{palice.ident}/%252e%252e/sd{pbob.ident}/"))
    bodies = {(await raw(scene.port, request(target, [("Host", host), ("Cookie", cookie)]))).body
              for host, target in refusals}
    assert bodies == ({NGINX_403} if scene.proxy == "nginx" else {b"forbidden\n"})
    if scene.proxy == "traefik":  # it also speaks HTTP/2 in the clear (h2c); the stand-in, like ingress-nginx's
        before = len(scene.pods.records())  # plain-HTTP listener, does not
        assert [await h2c(scene.port, host, cookie) for host in (bob.host, alice.host)] == ["2 403", "2 200"]
        assert [r["pod"] for r in scene.pods.records()[before:]] == [alice.pod]
    # A client's X-Auth-Request-Preferred-Username (not named by auth-response-headers by default) reaches
    # alice's own pod unchanged: only her own client can send it there (documented in docs/auth.md).
    reply = await scene.get(alice.host, user="alice", extra=[("X-Auth-Request-Preferred-Username", "bob")])
    assert (reply.status, received(reply)["pod"]) == (200, alice.pod)
    assert ("X-Auth-Request-Preferred-Username", "bob") in [tuple(h) for h in received(reply)["headers"]]


@pytest.fixture
async def three(request, make_scene):
    """A scene with a third user, carol, and an uninstall that answers once the id is FREE (its disk gone)."""
    return await make_scene(request.param, users=("alice", "bob", "carol"), instance={"release_wait_seconds": 30})


async def routed(scene: Scene, inst: Instance, user: str) -> Any:
    """``user``'s request once the proxy routes the instance's host to its ready pod again (the pod came back
    after a resume or a reinstall): the answer of /auth, or of the pod when admitted."""
    async def ready() -> bool:
        async with api_client(scene.kubeconfig) as api:
            ings = await client.NetworkingV1Api(api).list_namespaced_ingress(scene.pods.namespace)
            slices = await client.DiscoveryV1Api(api).list_namespaced_endpoint_slice(
                scene.pods.namespace, label_selector=f"kubernetes.io/service-name={inst.pod}")
        return any(i.metadata.name == inst.pod for i in ings.items) and any(
            e.conditions.ready for s in slices.items for e in s.endpoints or [])
    await wait_for(ready, timeout=60, what=f"the Ingress and a ready endpoint of {inst.pod}")

    async def answer() -> Any:  # no server or router for the host yet is 404; routed, /auth decides
        if scene.nginx is not None:
            await scene.nginx.sync()
        reply = await scene.get(inst.host, user=user)
        return reply if reply.status != 404 else None
    return await wait_for(answer, timeout=30, interval=0.2, what=f"{scene.proxy} routes {inst.host}")


async def _refused(call: Any) -> bool:
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return exc.code() == grpc.StatusCode.UNAUTHENTICATED
    return False


@pytest.mark.parametrize("three", PROXIES, indirect=True)
async def test_a_deleted_user_and_the_owner_of_a_reused_id_reach_no_pod(three) -> None:
    scene = three
    alice, bob = await install(scene, "alice"), await install(scene, "bob")
    start = len(scene.pods.records())

    # alice is deleted in Logto: usersync's User.Deleted (policy pause, what its webhook runs) revokes her
    # sessions, pauses her instance and marks it orphaned. Her old cookie opens nothing any more.
    policy = UserDeletedPolicy("pause", lambda: scene.services.channel("instance"),
                               lambda: scene.services.runtime.call_metadata("usersync"),
                               SessionStore(scene.stack.db).revoke_user)
    async with scene.stack.db.session() as session:
        assert (await policy.apply(session, "alice"))["sessions_revoked"] == 1
    get = instance_pb2.GetInstanceRequest(name=alice.name)

    async def revoked() -> bool:  # heard by the instance and auth services (NOTIFY; within a second)
        signed_out = (await scene.get(alice.host, user="alice")).status == 302  # else 403: paused
        return await _refused(scene.instances.GetInstance(get, metadata=scene.meta("alice"))) and signed_out
    await wait_for(revoked, timeout=5, interval=0.05, what="the services hear the revocation")
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await scene.instances.ResumeInstance(instance_pb2.ResumeInstanceRequest(name=alice.name),
                                             metadata=scene.meta("alice"))
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # A session made after the deletion (a sign-in racing the webhook) resumes the orphaned instance: it runs
    # again, and still only 403 meets her at its URL (the owner map admits nobody to an orphaned instance).
    settings = scene.stack.gateway.runtime.settings
    session_id, _ = await SessionStore(scene.stack.db).create(user="alice", ttl_seconds=600)
    scene.cookies["alice"] = SessionCookie([k.get_secret_value() for k in settings.auth.session_keys]).issue(
        session_id, "alice", int(time.time()) + 600)
    await scene.instances.ResumeInstance(instance_pb2.ResumeInstanceRequest(name=alice.name),
                                         metadata=scene.meta("alice"))
    await scene.stack.service.follower.resync()  # the owner map has read the resumed row
    assert (await routed(scene, alice, "alice")).status == 403
    assert scene.pods.records()[start:] == [], "the deleted user reached her pod"

    # bob uninstalls; carol's install gets the same id (FREE ids go first), so the same host and pod name.
    await scene.instances.DeleteInstance(instance_pb2.DeleteInstanceRequest(name=bob.name), metadata=scene.meta("bob"))
    started = time.monotonic()
    while (await scene.get(bob.host, user="bob")).status == 200:  # his own pod, on its way out
        assert time.monotonic() - started < 30, "still admitted 30 s after DeleteInstance returned"
    print(f"{scene.proxy}: bob's first refusal {time.monotonic() - started:.3f} s after DeleteInstance returned")
    carol = await install(scene, "carol")
    assert (carol.ident, carol.host) == (bob.ident, bob.host)
    before = len(scene.pods.records())
    assert (await scene.get(bob.host, user="bob")).status == 403
    reply = await scene.get(carol.host, user="carol")
    assert (reply.status, received(reply)["pod"]) == (200, carol.pod)
    assert [r["pod"] for r in scene.pods.records()[before:]] == [carol.pod]
    cookie = scene.cookies["bob"]
    assert not [r for r in scene.pods.records()[start:] if r["pod"] == carol.pod and cookie in json.dumps(r)]
