"""The REST bridge in front of the real services on the test bed: every RPC family answers over
REST, errors come with the right HTTP status and a google.rpc.Status JSON body, credentials
(bearer token and session cookie) and the request id reach the services, WatchInstance streams
newline-delimited JSON."""
from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import pytest

from tests.plugins.kube import load_sample

from .stack import SAMPLE, Rest, session_cookie, stack_settings

pytestmark = pytest.mark.testbed

BAD_REQUEST = "type.googleapis.com/google.rpc.BadRequest"
ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"


@pytest.fixture
async def rest(start_gateway, start_bridge, database_url, issuer, testbed, k8s_namespace, logto) -> Rest:
    settings = stack_settings(database_url, issuer, testbed.kubeconfig, k8s_namespace, logto)
    gw = await start_gateway("template", "instance", "auth", "usersync", settings=settings)
    bridge = await start_bridge(gw)
    return Rest(bridge.url, issuer, gw, k8s_namespace, logto)


def status_of(response: httpx.Response, http: int, code: int) -> dict[str, Any]:
    """Assert an error answer: HTTP status, JSON google.rpc.Status with the gRPC code."""
    assert response.status_code == http, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["code"] == code and body["message"], body
    return body


def detail(body: dict[str, Any], type_url: str) -> dict[str, Any]:
    [found] = [d for d in body.get("details", []) if d["@type"] == type_url]
    return found


def manifest(testbed: Any, namespace: str, **spec: Any) -> str:
    obj = load_sample(SAMPLE, testbed.domain, namespace)
    obj["spec"].update(spec)
    return json.dumps(obj)


async def wait_state(http: httpx.AsyncClient, rest: Rest, name: str, user: str, state: str,
                     timeout: float = 90) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        got = (await http.get(f"/v1/{name}", headers=rest.headers(user))).json()
        if got.get("state") == state or time.monotonic() > deadline:
            assert got.get("state") == state, got
            return got
        await asyncio.sleep(0.5)


async def test_template_and_instance_families_over_rest(rest: Rest, testbed: Any) -> None:
    ns = rest.namespace
    async with rest.client() as http:
        # 401: no credentials; a Bearer challenge and a Status body.
        r = await http.get(f"/v1/namespaces/{ns}/templates")
        status_of(r, 401, 16)
        assert r.headers["www-authenticate"].startswith("Bearer")

        # 403: a user may not publish templates.
        r = await http.post(f"/v1/namespaces/{ns}/templates", headers=rest.headers("alice"),
                            json={"source": {"manifest": manifest(testbed, ns)}})
        status_of(r, 403, 7)

        # 400: every violation, with the field that is wrong.
        r = await http.post(f"/v1/namespaces/{ns}/templates", headers=rest.headers("admin"),
                            json={"source": {"manifest": manifest(testbed, ns, replicas=2)}})
        body = status_of(r, 400, 3)
        fields = [v["field"] for v in detail(body, BAD_REQUEST)["fieldViolations"]]
        assert any("replicas" in f for f in fields), fields

        # 200, then 409 for the same name; the request id travels to the audit log.
        r = await http.post(f"/v1/namespaces/{ns}/templates", headers=rest.headers("admin", **{
            "X-Request-Id": "rest-create-template-1"}), json={"source": {"manifest": manifest(testbed, ns)}})
        assert r.status_code == 200, r.text
        assert r.json()["template"]["name"] == f"namespaces/{ns}/templates/{SAMPLE}"
        assert r.headers["x-request-id"] == "rest-create-template-1"
        r = await http.post(f"/v1/namespaces/{ns}/templates", headers=rest.headers("admin"),
                            json={"source": {"manifest": manifest(testbed, ns)}})
        status_of(r, 409, 6)

        # 404, and reads for every signed-in user with defaults present.
        status_of(await http.get(rest.template("nope"), headers=rest.headers("alice")), 404, 5)
        listed = (await http.get(f"/v1/namespaces/{ns}/templates", headers=rest.headers("alice"))).json()
        assert [t["name"] for t in listed["templates"]] == [f"namespaces/{ns}/templates/{SAMPLE}"]
        assert listed["templates"][0]["liveInstanceCount"] == 0

        # Instances: install, 409 on a second install (ErrorInfo names the existing one), others refused.
        r = await http.post(f"{rest.template()}/instances", headers=rest.headers("alice"), json={})
        assert r.status_code == 200, r.text
        name = r.json()["name"]
        body = status_of(await http.post(f"{rest.template()}/instances", headers=rest.headers("alice"), json={}),
                         409, 6)
        assert detail(body, ERROR_INFO)["metadata"]["instance"] == name
        # Not the owner: PERMISSION_DENIED (the id is no secret: it is in the instance's URL).
        body = status_of(await http.post(f"/v1/{name}:pause", headers=rest.headers("bob"), json={}), 403, 7)
        assert detail(body, ERROR_INFO)["reason"] == "NOT_OWNER"
        await wait_state(http, rest, name, "alice", "RUNNING")

        # A template with instances is not deleted without force: FAILED_PRECONDITION -> 400.
        status_of(await http.delete(rest.template(), headers=rest.headers("admin")), 400, 9)

        r = await http.post(f"/v1/{name}:pause", headers=rest.headers("alice"), json={"requestId": "pause-1"})
        assert r.status_code == 200, r.text
        await wait_state(http, rest, name, "alice", "PAUSED")
        # A replay with the same request id returns the first result, it does not fail.
        again = await http.post(f"/v1/{name}:pause", headers=rest.headers("alice"), json={"requestId": "pause-1"})
        assert again.status_code == 200 and again.json()["name"] == name
        r = await http.post(f"/v1/{name}:resume", headers=rest.headers("alice"), json={})
        assert r.status_code == 200, r.text
        await wait_state(http, rest, name, "alice", "RUNNING")

        consistency = await http.get(f"{rest.template()}/instances:checkConsistency", headers=rest.headers("admin"))
        assert consistency.status_code == 200 and consistency.json()["consistent"] is True, consistency.text

        r = await http.delete(f"/v1/{name}", headers=rest.headers("alice"))
        assert r.status_code == 200, r.text
        r = await http.delete(rest.template(), headers=rest.headers("admin"), params={"force": "true"})
        assert r.status_code == 200, r.text

        # The audit log over REST: admin only; the create above is there with the client's request id.
        status_of(await http.get("/v1/auditEvents", headers=rest.headers("alice")), 403, 7)
        events = (await http.get("/v1/auditEvents", headers=rest.headers("admin"),
                                 params={"action": "TemplateService.CreateTemplate", "outcome": "SUCCESS"})).json()
        assert [e["requestId"] for e in events["auditEvents"]] == ["rest-create-template-1"]


async def test_watch_instance_streams_ndjson(rest: Rest, testbed: Any) -> None:
    ns = rest.namespace
    async with rest.client() as http:
        r = await http.post(f"/v1/namespaces/{ns}/templates", headers=rest.headers("admin"),
                            json={"source": {"manifest": manifest(testbed, ns)}})
        assert r.status_code == 200, r.text
        name = (await http.post(f"{rest.template()}/instances", headers=rest.headers("alice"), json={})).json()["name"]

        # A missing instance: the HTTP status of the error and one {"error": Status} line.
        async with http.stream("GET", f"/v1/{name[:-1]}99:watch", headers=rest.headers("admin")) as missing:
            assert missing.status_code == 404
            line = json.loads((await missing.aread()).decode().splitlines()[0])
            assert line["error"]["code"] == 5

        states: list[str] = []
        async with http.stream("GET", f"/v1/{name}:watch", headers=rest.headers("alice")) as stream:
            assert stream.status_code == 200
            assert stream.headers["content-type"] == "application/x-ndjson"
            paused_sent = False
            async for line in stream.aiter_lines():
                event = json.loads(line)["result"]  # each line is one whole JSON object
                assert event["instance"]["name"] == name
                states.append(event["instance"]["state"])
                if states[-1] == "RUNNING" and not paused_sent:
                    r = await http.post(f"/v1/{name}:pause", headers=rest.headers("alice"), json={})
                    assert r.status_code == 200, r.text
                    paused_sent = True
                if states[-1] == "PAUSED":
                    break
        assert paused_sent and states[-1] == "PAUSED", states


async def test_auth_usersync_and_cookie_over_rest(rest: Rest) -> None:
    async with rest.client() as http:
        me = (await http.get("/v1/auth:whoami", headers=rest.headers("alice"))).json()
        assert me["subject"] == "alice" and me["kind"] == "USER" and me["admin"] is False
        check = await http.post("/v1/auth:check", headers=rest.headers("alice"),
                                json={"url": "https://no-such-instance.aigc.test/"})
        assert check.status_code == 200, check.text
        # Signed in (so not 401), but no instance is served there: 403.
        assert check.json()["httpStatus"] == 403, check.text

        # The session cookie reaches the services (the same cookie the browser holds).
        cookie = await session_cookie(rest.gateway, "carol")
        me = await http.get("/v1/auth:whoami", headers={"Cookie": cookie})
        assert me.status_code == 200 and me.json()["subject"] == "carol", me.text
        session = (await http.get("/v1/auth/session", headers={"Cookie": cookie})).json()
        assert session["principal"]["subject"] == "carol"
        # ...but a cookie-authenticated write from another site is refused before any service sees it.
        r = await http.post("/v1/users/carol/sessions:revoke", json={},
                            headers={"Cookie": cookie, "Origin": "https://evil.example"})
        status_of(r, 403, 7)
        # A bad cookie is a credential that fails, not an anonymous call.
        status_of(await http.get("/v1/auth:whoami", headers={"Cookie": "aigc_session=forged"}), 401, 16)

        # UserSync: admin only; a user is refused; Logto down is UNAVAILABLE -> 503 with Retry-After.
        rest.logto.add_user("alice")
        status_of(await http.post("/v1/users/alice:sync", headers=rest.headers("alice"), json={}), 403, 7)
        r = await http.post("/v1/users/alice:sync", headers=rest.headers("admin"), json={"dryRun": True})
        assert r.status_code == 200, r.text
        r = await http.post("/v1/users:importFromLogto", headers=rest.headers("admin"), json={"dryRun": True})
        assert r.status_code == 200 and r.json()["dryRun"] is True, r.text
        assert r.json()["usersScanned"] == 1
        await rest.logto.go_down()
        r = await http.post("/v1/users/alice:sync", headers=rest.headers("admin"), json={})
        status_of(r, 503, 14)
        await rest.logto.come_up()
        r = await http.post("/v1/users/carol/sessions:revoke", headers=rest.headers("admin"), json={})
        assert r.status_code == 200 and r.json()["revokedCount"] == 1, r.text
        status_of(await http.get("/v1/auth:whoami", headers={"Cookie": cookie}), 401, 16)


async def test_bridge_answers_429_and_503_itself(rest: Rest, start_bridge) -> None:
    # One token per 100 s: the bucket cannot refill during the test however slow the machine is, so the
    # third request is the first refused (a 0.5/s window refilled under load and let it through).
    limited = await start_bridge(rest.gateway, None, "--rate-limit=0.01", "--rate-burst=2")
    async with httpx.AsyncClient(base_url=limited.url, timeout=30) as http:
        headers = rest.headers("alice")
        codes = [(await http.get("/v1/auth:whoami", headers=headers)).status_code for _ in range(2)]
        assert codes == [200, 200]
        r = await http.get("/v1/auth:whoami", headers=headers)
        body = status_of(r, 429, 8)
        assert int(r.headers["retry-after"]) >= 1
        assert any(d["@type"].endswith("RetryInfo") for d in body["details"])
        # Another client is not held back by this one.
        assert (await http.get("/v1/auth:whoami", headers=rest.headers("bob"))).status_code == 200

    down = await start_bridge(None, {"auth": "127.0.0.1:1"})
    async with httpx.AsyncClient(base_url=down.url, timeout=30) as http:
        r = await http.get("/v1/auth:whoami", headers=rest.headers("alice"))
        body = status_of(r, 503, 14)
        assert "127.0.0.1" not in body["message"]  # no internal addresses in answers
        assert (await http.get("/readyz")).status_code == 503


async def test_nul_bytes_are_bad_input_not_server_errors(rest: Rest) -> None:
    """PostgreSQL cannot store NUL: a NUL in any string must be refused as bad input — 400,
    INVALID_ARGUMENT, a field violation naming the field — never reach the database as a 500.
    (schemathesis finds this now and then; here it is every time.)"""
    ns = rest.namespace
    probes = [  # (method, path, query, body, the field the violation must name)
        ("GET", "/v1/auditEvents", {"action": "a\x00b"}, None, "action"),
        ("GET", "/v1/auditEvents", {"actor": "\x00"}, None, "actor"),
        ("GET", f"/v1/namespaces/{ns}/templates/-/instances", {"owner": "x\x00"}, None, "owner"),
        ("GET", f"/v1/namespaces/{ns}/templates/a%00b", None, None, "name"),
        ("POST", "/v1/users/al%00ice:sync", None, {}, "user"),
        ("POST", f"/v1/namespaces/{ns}/templates:validate", None, {"source": {"manifest": "kind: \x00"}},
         "source.manifest"),
    ]
    got = []
    async with rest.client() as http:
        for method, path, params, body, _field in probes:
            r = await http.request(method, path, params=params, json=body, headers=rest.headers("admin"))
            answer = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
            fields = [v["field"] for d in answer.get("details", []) if d.get("@type") == BAD_REQUEST
                      for v in d["fieldViolations"]]
            got.append((method, path, r.status_code, answer.get("code"), fields))
    assert got == [(m, p, 400, 3, [f]) for m, p, _q, _b, f in probes]
