"""Envoy's ``envoy.service.auth.v3.Authorization/Check`` (ext_authz): the same decision as ``GET /auth``.

Envoy (and Istio, and other gateways speaking ext_authz) sends the request's
attributes. The routed host is ``attributes.request.http.host``: the
``:authority`` Envoy's route table matched (for an HTTP/1.1 absolute-form
request line Envoy takes it from the request line, and a Host header that
disagrees is not used); the path is ``attributes.request.http.path`` (``:path``
as routed, normalised here as nginx would). Nothing in ``http.headers`` is read
for the URL — a client's ``Host``/``X-Forwarded-Host``/``X-Original-URL`` copies
land there and are ignored — so no ``rh`` parameter is needed: the host is the
routed one by construction (:func:`url_of`). A host Envoy joined from duplicate
headers (``a,b``) is not a host and is refused.
Allowed requests go on with ``X-Auth-Request-*`` set (overwriting any copy the
client sent) and the ``cookie`` header without the gateway's own cookies
(rewritten, or removed when nothing else is left: :mod:`.cookies`); denied ones get 401 or 403 straight from the proxy. The call
itself must carry the gateway's service credential (configure Envoy's
``grpc_service.initial_metadata`` with ``x-aigc-service-token``).
"""
from __future__ import annotations

from typing import Any

from google.rpc import code_pb2, status_pb2

from aigc_gateway.api.envoy import envoy_config_core_v3_base_pb2 as core
from aigc_gateway.api.envoy import envoy_service_auth_v3_external_auth_pb2 as ext
from aigc_gateway.api.envoy import envoy_service_auth_v3_external_auth_pb2_grpc as ext_grpc
from aigc_gateway.api.envoy import envoy_type_v3_http_status_pb2 as http_status
from aigc_gateway.identity import require_admin
from aigc_gateway.sessions import AmbiguousCookie, single_cookie

from .checker import AccessChecker, Credentials
from .cookies import gateway_cookie_names, without_gateway_cookies
from .decision import Decision, Outcome

_DENIED = {Outcome.UNAUTHENTICATED: (code_pb2.UNAUTHENTICATED, http_status.Unauthorized),
           Outcome.FORBIDDEN: (code_pb2.PERMISSION_DENIED, http_status.Forbidden)}
_IDENTITY_HEADERS = ("x-auth-request-user", "x-auth-request-email", "x-auth-request-preferred-username")


def _header(key: str, value: str) -> core.HeaderValueOption:
    return core.HeaderValueOption(header=core.HeaderValue(key=key, value=value),
                                  append_action=core.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD)


def credentials_of(headers: dict[str, str], cookie_name: str) -> Credentials:
    try:
        value = single_cookie(headers.get("cookie"), cookie_name)
    except AmbiguousCookie:
        return Credentials(ambiguous=True)
    bearer = None
    scheme, _, token = headers.get("authorization", "").partition(" ")
    if not value and scheme.lower() == "bearer" and token.strip():
        bearer = token.strip()
    return Credentials(session_cookie=value, bearer_token=bearer)


def response_of(decision: Decision, cookie: str | None = None,
                names: frozenset[str] = frozenset()) -> ext.CheckResponse:
    """``cookie``: the request's cookie header (Envoy joins several with "; "); an allowed answer passes it on
    without the cookies ``names`` (the gateway's), and removes the header when nothing else is left."""
    if decision.allowed:
        p = decision.principal
        assert p is not None
        headers = [_header("x-auth-request-user", p.subject), _header("x-auth-request-email", p.email),
                   _header("x-auth-request-preferred-username", p.preferred_username)]
        kept = without_gateway_cookies([cookie] if cookie else [], names)
        if kept:
            headers.append(_header("cookie", kept))
        return ext.CheckResponse(status=status_pb2.Status(code=code_pb2.OK), ok_response=ext.OkHttpResponse(
            headers=headers, headers_to_remove=[] if kept else ["cookie"]))
    code, http = _DENIED[decision.outcome]
    return ext.CheckResponse(status=status_pb2.Status(code=code, message=decision.reason),
                             denied_response=ext.DeniedHttpResponse(status=http_status.HttpStatus(code=http),
                                                                    body=decision.reason + "\n"))


def url_of(http: Any) -> str | None:
    """The URL Envoy routed: ``scheme://`` + ``http.host`` (the routed authority) + ``http.path``; never a header."""
    if not http.host or not http.path or any(c in http.host for c in "/?#@\\"):
        return None  # an authority that would run into the path: not the host Envoy routed on
    return f"{http.scheme or 'https'}://{http.host}{http.path}"


class EnvoyAuthorizationServicer(ext_grpc.AuthorizationServicer):
    def __init__(self, checker: AccessChecker, cookie_name: str):
        self.checker = checker
        self.cookie_name = cookie_name
        self.gateway_cookies = gateway_cookie_names(cookie_name)

    async def Check(self, request: ext.CheckRequest, context: Any) -> ext.CheckResponse:
        require_admin()  # the proxy, with the gateway's service credential
        http = request.attributes.request.http
        headers = {k.lower(): v for k, v in http.headers.items()}
        url = url_of(http)
        decision = await self.checker.check(url, credentials_of(headers, self.cookie_name), method=http.method)
        return response_of(decision, headers.get("cookie"), self.gateway_cookies)
