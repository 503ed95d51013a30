"""Bearer JWTs: only a token signed by the configured issuer's key, for our
audience, unexpired, with an allowed algorithm, authenticates a call."""
from __future__ import annotations

import base64
import json
import time

import grpc
import pytest
from joserfc.jwk import RSAKey

from aigc_gateway.api.v1 import audit_pb2, audit_pb2_grpc, auth_pb2, auth_pb2_grpc

from ..plugins.gateway import TEST_SERVICE_TOKEN, bearer


def _b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


@pytest.fixture
async def whoami(start_gateway):
    gateway = await start_gateway("auth")
    stub = auth_pb2_grpc.AuthServiceStub(gateway.channel("auth"))

    async def call(metadata):
        return await stub.WhoAmI(auth_pb2.WhoAmIRequest(), metadata=metadata)

    return call


async def test_valid_token_gives_the_principal(whoami, issuer) -> None:
    me = await whoami(bearer(issuer.mint("alice", roles=["admin", "user"], username="alice")))
    assert (me.subject, me.kind, me.admin, list(me.roles)) == ("alice", auth_pb2.Principal.USER, True, ["admin", "user"])
    assert me.email == "alice@aigc.test" and me.preferred_username == "alice"
    plain = await whoami(bearer(issuer.mint("bob", roles=["user"])))
    assert not plain.admin


def _tampered(issuer) -> str:
    header, payload, signature = issuer.mint("bob").split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["roles"] = ["admin"]
    return ".".join([header, _b64(claims), signature])


BAD_TOKENS = {
    "bad signature": lambda i: i.mint("mallory", key=RSAKey.generate_key(2048, parameters={"kid": i.key.kid})),
    "unknown key": lambda i: i.mint("mallory", key=RSAKey.generate_key(2048, parameters={"kid": "other"})),
    "tampered claims": _tampered,
    "wrong audience": lambda i: i.mint("mallory", aud="https://someone-else"),
    "wrong issuer": lambda i: i.mint("mallory", iss="https://evil.example"),
    "expired": lambda i: i.mint("mallory", exp=int(time.time()) - 3600, iat=int(time.time()) - 7200),
    "not yet valid": lambda i: i.mint("mallory", nbf=int(time.time()) + 3600),
    "no exp": lambda i: i.mint("mallory", exp=None),
    "alg none": lambda i: ".".join([_b64({"alg": "none", "typ": "JWT"}), _b64(
        {"iss": i.url, "aud": i.audience, "sub": "mallory", "exp": int(time.time()) + 600, "roles": ["admin"]}), ""]),
    "garbage": lambda i: "not-a-jwt",
}


@pytest.mark.parametrize("case", sorted(BAD_TOKENS))
async def test_bad_tokens_are_refused(whoami, issuer, case: str) -> None:
    token = BAD_TOKENS[case](issuer)
    if case == "no exp":
        # The token really has no `exp` claim.
        assert "exp" not in json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await whoami(bearer(token))
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED, err.value.details()


async def test_malformed_authorization_header(whoami) -> None:
    for value in ("Basic dXNlcjpwYXNz", "Bearer ", "token"):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await whoami((("authorization", value),))
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_service_token(whoami) -> None:
    me = await whoami((("x-aigc-service-token", TEST_SERVICE_TOKEN), ("x-aigc-service-name", "instance")))
    assert (me.subject, me.kind, me.admin) == ("service:instance", auth_pb2.Principal.SERVICE, True)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await whoami((("x-aigc-service-token", TEST_SERVICE_TOKEN[:-1] + "y"),))
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_non_admin_gets_permission_denied(start_gateway, issuer) -> None:
    gateway = await start_gateway("template")
    stub = audit_pb2_grpc.AuditServiceStub(gateway.channel("template"))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ListAuditEvents(audit_pb2.ListAuditEventsRequest(), metadata=bearer(issuer.mint("bob")))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    ok = await stub.ListAuditEvents(audit_pb2.ListAuditEventsRequest(),
                                    metadata=bearer(issuer.mint("root", roles=["admin"])))
    # The refusal itself was audited.
    assert [(e.actor, e.action, e.outcome, e.error_code) for e in ok.audit_events] == [
        ("bob", "AuditService.ListAuditEvents", audit_pb2.AuditEvent.DENIED, "PERMISSION_DENIED")]
