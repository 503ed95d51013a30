"""A client's own identity headers never reach an instance, through both real proxies (issue 11).

A header that an Ingress's `auth-response-headers` does not name passes from the client to the backend
unchanged, through ingress-nginx (and the stand-in) and Traefik's provider alike. So the template service
makes every template name `X-Auth-Request-User,X-Auth-Request-Email` (AUTH_RESPONSE_HEADERS_ADDED), and
`/auth` answers every 2xx with both headers, empty when the session knows no e-mail address. Here an admin
publishes a template WITHOUT the annotation, and alice, signed in, sends `X-Auth-Request-User: bob` to her
own instance: her pod gets the auth service's values, never the client's."""
from __future__ import annotations

import time

import pytest
from kubernetes_asyncio import client

from aigc_gateway.sessions import SessionCookie, SessionStore
from tests.auth.stack import DOMAIN
from tests.plugins.kube import api_client

from .scene import COOKIE, IDENTITY, install, publish, received

pytestmark = pytest.mark.testbed
PROXIES = ["nginx", "traefik"]
HEADERS = "nginx.ingress.kubernetes.io/auth-response-headers"
CLIENT_COPIES = [("X-Auth-Request-User", "bob"), ("x-auth-request-user", "root"),
                 ("X-Auth-Request-Email", "bob@example.test")]


@pytest.fixture
async def scene(request, make_scene):
    return await make_scene(request.param)


def identity(reply) -> list[tuple[str, str]]:
    """The identity headers the pod received (any spelling, `_` for `-` included), in order."""
    return [(k, v) for k, v in received(reply)["headers"]
            if k.lower().replace("_", "-") in ("x-auth-request-user", "x-auth-request-email")]


@pytest.mark.parametrize("scene", PROXIES, indirect=True)
async def test_client_identity_headers_never_reach_a_template_published_without_auth_response_headers(
        scene) -> None:
    host = f"instances<id>-plain.{DOMAIN}"
    change = await publish(scene, "plain", host, "/", "ImplementationSpecific", identity=False)
    assert [(w.field, w.reason) for w in change.warnings if w.reason.startswith("AUTH_")] == [
        (f"spec.network.networkConf[Annotation][{HEADERS}]", "AUTH_RESPONSE_HEADERS_ADDED")]
    alice = await install(scene, "alice", "plain", host)
    async with api_client(scene.kubeconfig) as api:
        ing = await client.NetworkingV1Api(api).read_namespaced_ingress(alice.pod, scene.pods.namespace)
    assert ing.metadata.annotations[HEADERS] == IDENTITY  # kruise-game copied what the template service added

    # alice's session from sign-in (the provider gives an e-mail address): the auth answer's values, once.
    start = len(scene.pods.records())
    reply = await scene.get(alice.host, user="alice", extra=CLIENT_COPIES)
    assert (reply.status, received(reply)["pod"]) == (200, alice.pod)
    assert sorted(identity(reply)) == [("X-Auth-Request-Email", "alice@example.test"),
                                       ("X-Auth-Request-User", "alice")]

    # A session without an e-mail address: /auth answers `X-Auth-Request-Email:` (present, empty). nginx's
    # `proxy_set_header` with an empty variable sends no header at all; Traefik deletes the client's copy and
    # copies the auth answer's (empty) value. Either way the client's address is gone.
    settings = scene.stack.gateway.runtime.settings
    session_id, _ = await SessionStore(scene.stack.db).create(user="alice", email="", ttl_seconds=600)
    cookie = SessionCookie([k.get_secret_value() for k in settings.auth.session_keys]).issue(
        session_id, "alice", int(time.time()) + 600)
    reply = await scene.get(alice.host, extra=[("Cookie", f"{COOKIE}={cookie}"), *CLIENT_COPIES])
    assert (reply.status, received(reply)["pod"]) == (200, alice.pod)
    emptied = [] if scene.proxy == "nginx" else [("X-Auth-Request-Email", "")]
    assert sorted(identity(reply)) == [*emptied, ("X-Auth-Request-User", "alice")]

    # Nobody else's request reached the pod, and no client copy reached it at all.
    records = scene.pods.records()[start:]
    assert [r["pod"] for r in records] == [alice.pod, alice.pod]
    assert not [(k, v) for r in records for k, v in r["headers"] if v in ("bob", "root", "bob@example.test")]
