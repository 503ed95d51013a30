"""The gateway's cookies never reach an instance pod, through both real proxies; the instance's own do.

The browser sends the gateway's session cookie (Domain=<domain>) to every instance host, and both proxies
pass the client's Cookie header to the pod unchanged: code in a user's image would read the session of
whoever opens it, an admin's included. /auth's allowed answer carries `Cookie` without the gateway's
cookies (none when nothing else is left) and every template names `Cookie` in `auth-response-headers`
(services/auth/cookies.py), so the proxy replaces the client's header: nginx with `proxy_set_header
'Cookie' $authHeaderN` (empty: no header), Traefik's forwardAuth deletes the client's and copies the
answer's when present. Here alice (her session, her instance's own `app=1`) and an admin with
`auth.allow_admin_access` open alice's instance; the pod's request log says what it received."""
from __future__ import annotations

import json
import time

import pytest

from aigc_gateway.sessions import SessionCookie, SessionStore

from .scene import COOKIE, install, received

pytestmark = pytest.mark.testbed
PROXIES = ["nginx", "traefik"]


@pytest.fixture
async def scene(request, make_scene):
    return await make_scene(request.param, users=("alice",), auth={"allow_admin_access": True})


def cookies(reply) -> list[str]:
    """The Cookie headers the pod received (any spelling), in order."""
    return [v for k, v in received(reply)["headers"] if k.lower() == "cookie"]


@pytest.mark.parametrize("scene", PROXIES, indirect=True)
async def test_the_gateway_cookies_never_reach_the_pod_the_instances_own_do(scene) -> None:
    alice = await install(scene, "alice")
    settings = scene.stack.gateway.runtime.settings
    session_id, _ = await SessionStore(scene.stack.db).create(user="root", roles=(settings.oidc.admin_role,),
                                                              ttl_seconds=600)
    admin = SessionCookie([k.get_secret_value() for k in settings.auth.session_keys]).issue(
        session_id, "root", int(time.time()) + 600)
    ours = {"alice": f"{COOKIE}={scene.cookies['alice']}", "admin": f"{COOKIE}={admin}"}
    start = len(scene.pods.records())

    cases = [
        # (who, the client's Cookie headers, the Cookie headers the pod gets)
        ("alice", [f"{ours['alice']}; app=1"], ["app=1"]),
        ("alice", [f"app=1; {ours['alice']}; {COOKIE}_signin=state"], ["app=1"]),
        ("alice", [ours["alice"]], []),  # only the session: no Cookie header at all
        ("alice", ["app=1", f"{ours['alice']}; b=\"x y\""], ["app=1; b=\"x y\""]),  # two headers: joined
        ("alice", [f"{ours['alice']}; {COOKIE}2=mine"], [f"{COOKIE}2=mine"]),  # a name that starts like ours
        ("admin", [f"{ours['admin']}; app=1"], ["app=1"]),
        ("admin", [ours["admin"]], []),
        # 6 KB of the instance's own cookies: the answer that carries them fits ingress-nginx's auth buffer only
        # with the proxy-buffer-size the template service adds (4k by default: 500 from about 3.7 KB).
        ("alice", [f"{ours['alice']}; big={'x' * 6000}"], [f"big={'x' * 6000}"]),
    ]
    seen = []
    for who, sent, _ in cases:
        reply = await scene.get(alice.host, extra=[("Cookie", c) for c in sent])
        seen.append((who, sent, reply.status, received(reply)["pod"], cookies(reply)))
    assert seen == [(who, sent, 200, alice.pod, expected) for who, sent, expected in cases]

    # Nothing else reached the pod, and no gateway cookie value in anything it received.
    records = scene.pods.records()[start:]
    assert [r["pod"] for r in records] == [alice.pod] * len(cases)
    logged = json.dumps(records)
    assert scene.cookies["alice"] not in logged and admin not in logged and "state" not in logged
