"""The routed-host binding of ``/auth`` at the pure level (issue 11): which headers carry the request for
each ``auth.proxy``, and the refusal when the host the proxy routed on (the auth-url's ``rh=$host``) is not
the request's host. tests/auth/test_nginx.py sends the same attacks through a real nginx."""
from __future__ import annotations

import pytest

from aigc_gateway.api.envoy import envoy_service_auth_v3_attribute_context_pb2 as attrs
from aigc_gateway.services.auth.answers import request_url
from aigc_gateway.services.auth.envoy import url_of
from aigc_gateway.services.auth.urls import (
    ROUTED_HOST_MISMATCH,
    ROUTED_HOST_MISSING,
    BadURL,
    RoutedHostRefused,
    bind_routed_host,
    parse_original_url,
    routed_host_of,
)

H1, H2 = "instances1-cpu.aigc.test", "instances2-cpu.aigc.test"


def verdict(headers: list[tuple[str, str]], query: bytes, *, traefik: bool) -> str:
    """What /auth makes of one request: "bound <host><path>", a refusal code, or "unreadable"."""
    seen: dict[bytes, list[str]] = {}
    for name, value in headers:
        seen.setdefault(name.lower().encode(), []).append(value)
    url = request_url(seen, traefik)
    if url is None:
        return "unreadable"
    try:
        target = parse_original_url(url)
        bind_routed_host(target, routed_host_of(query))
    except RoutedHostRefused as exc:
        return exc.code
    except BadURL:
        return "unreadable"
    return f"bound {target.host}{target.path}"


@pytest.mark.parametrize("query, expected", [
    (b"", None), (b"rh=" + H1.encode(), H1), (b"x=1&rh=" + H1.encode() + b"&y=2", H1),
    (b"rh=" + H1.encode() + b"&rh=" + H2.encode(), None),  # a Host header holding "&rh=" cannot choose
    (b"rh=" + H1.encode() + b"&rh=" + H1.encode(), None), (b"arh=" + H1.encode(), None),
    (b"rh=instances1%2dcpu.aigc.test", "instances1%2dcpu.aigc.test"),  # verbatim: never percent-decoded
    (b"rh=", ""),
])
def test_routed_host_parameter(query: bytes, expected: str | None) -> None:
    assert routed_host_of(query) == expected


NGINX = [
    # The bypass: request line names H2 (nginx routes there, $host = H2), Host header says H1.
    ([("X-Original-URL", f"http://{H1}/")], f"rh={H2}", ROUTED_HOST_MISMATCH),
    ([("X-Original-URL", f"http://{H1}/")], f"rh={H1}", f"bound {H1}/"),
    # Host header variants nginx routes on the same host: case, port, trailing dot.
    ([("X-Original-URL", f"http://{H1.upper()}.:8080/x")], f"rh={H1}", f"bound {H1}/x"),
    ([("X-Original-URL", f"https://{H1}/")], f"rh={H1}.", f"bound {H1}/"),
    # IDN: the A-label and the U-label name one host; a look-alike does not.
    ([("X-Original-URL", "http://xn--bcher-kva.aigc.test/")], "rh=bücher.aigc.test", "bound xn--bcher-kva.aigc.test/"),
    ([("X-Original-URL", f"http://{H1}/")], "rh=ｉnstances1-cpu.aigc.test", ROUTED_HOST_MISMATCH),
    # Percent-escapes in the routed host are the client's (nginx puts $host in verbatim): refused.
    ([("X-Original-URL", f"http://{H1}/")], "rh=instances1%2dcpu.aigc.test", ROUTED_HOST_MISMATCH),
    ([("X-Original-URL", f"http://{H1}/")], "", ROUTED_HOST_MISSING),  # a template without rh=$host
    ([("X-Original-URL", f"http://{H1}/")], f"rh={H1}&rh={H1}", ROUTED_HOST_MISSING),
    ([("X-Original-URL", f"http://{H1}/")], f"rh={H1}&rh={H2}", ROUTED_HOST_MISSING),
    ([("X-Original-URL", f"http://{H1}/")], "rh=", ROUTED_HOST_MISMATCH),
    # Two X-Original-URL: which one did nginx route? Neither.
    ([("X-Original-URL", f"http://{H1}/"), ("X-Original-URL", f"http://{H2}/")], f"rh={H1}", "unreadable"),
    # X-Forwarded-* are the client's own headers behind nginx: never read.
    ([("X-Forwarded-Host", H1), ("X-Forwarded-Uri", "/"), ("X-Forwarded-Proto", "https")], f"rh={H1}",
     "unreadable"),
    ([("X-Original-URL", f"http://{H2}/"), ("X-Forwarded-Host", H1)], f"rh={H2}", f"bound {H2}/"),
    # HTTP/1.0 without Host: nginx sends an empty host in X-Original-URL.
    ([("X-Original-URL", "http:///")], f"rh={H1}", "unreadable"),
    # Path-routed templates: the path is the one nginx matched on, the host still bound.
    ([("X-Original-URL", "http://sd.aigc.test/sd1/%2e%2e/sd2/x")], "rh=sd.aigc.test", "bound sd.aigc.test/sd2/x"),
    ([("X-Original-URL", "http://sd.aigc.test/sd1/")], f"rh={H2}", ROUTED_HOST_MISMATCH),
]


@pytest.mark.parametrize("headers, query, expected", NGINX)
def test_behind_nginx(headers: list[tuple[str, str]], query: str, expected: str) -> None:
    assert verdict(headers, query.encode(), traefik=False) == expected


TRAEFIK = [
    ([("X-Forwarded-Proto", "https"), ("X-Forwarded-Host", H1), ("X-Forwarded-Uri", "/x")], f"rh={H1}",
     f"bound {H1}/x"),
    # Traefik keeps case and port in X-Forwarded-Host; $host in the auth-url is the same routed host.
    ([("X-Forwarded-Proto", "https"), ("X-Forwarded-Host", f"{H1.upper()}:8443"), ("X-Forwarded-Uri", "/")],
     f"rh={H1.upper()}", f"bound {H1}/"),
    ([("X-Forwarded-Proto", "https"), ("X-Forwarded-Host", H1), ("X-Forwarded-Uri", "/")], f"rh={H2}",
     ROUTED_HOST_MISMATCH),
    ([("X-Forwarded-Proto", "https"), ("X-Forwarded-Host", H1), ("X-Forwarded-Uri", "/")], "", ROUTED_HOST_MISSING),
    # A client-sent X-Original-URL passes through Traefik untouched: ignored.
    ([("X-Original-URL", f"http://{H2}/"), ("X-Forwarded-Proto", "https"), ("X-Forwarded-Host", H1),
      ("X-Forwarded-Uri", "/")], f"rh={H1}", f"bound {H1}/"),
    ([("X-Original-URL", f"http://{H1}/")], f"rh={H1}", "unreadable"),
    # Duplicates: refused, whichever pair.
    ([("X-Forwarded-Host", H1), ("X-Forwarded-Host", H2), ("X-Forwarded-Uri", "/")], f"rh={H1}", "unreadable"),
    ([("X-Forwarded-Host", H1), ("X-Forwarded-Uri", "/"), ("X-Forwarded-Uri", "/x")], f"rh={H1}", "unreadable"),
    ([("X-Forwarded-Proto", "https"), ("X-Forwarded-Proto", "http"), ("X-Forwarded-Host", H1),
      ("X-Forwarded-Uri", "/")], f"rh={H1}", "unreadable"),
    ([("X-Forwarded-Host", H1)], f"rh={H1}", "unreadable"),
    # Traefik's cleaned path; an encoded separator it would only pass when told to is not guessed at.
    ([("X-Forwarded-Host", "sd.aigc.test"), ("X-Forwarded-Uri", "/sd1/x?a=%2F")], "rh=sd.aigc.test",
     "bound sd.aigc.test/sd1/x"),
    ([("X-Forwarded-Host", "sd.aigc.test"), ("X-Forwarded-Uri", "/sd1%2F..%2Fsd2")], "rh=sd.aigc.test", "unreadable"),
    ([("X-Forwarded-Host", "sd.aigc.test"), ("X-Forwarded-Uri", "/sd1%5c..%5csd2")], "rh=sd.aigc.test", "unreadable"),
    ([("X-Forwarded-Host", "sd.aigc.test"), ("X-Forwarded-Uri", "/sd1/%252e%252e/sd2")], "rh=sd.aigc.test",
     "unreadable"),
    # A URI that does not start with / would run the host on into it.
    ([("X-Forwarded-Host", "instances1"), ("X-Forwarded-Uri", "-cpu.aigc.test/")], "rh=instances1", "unreadable"),
]


@pytest.mark.parametrize("headers, query, expected", TRAEFIK)
def test_behind_traefik(headers: list[tuple[str, str]], query: str, expected: str) -> None:
    assert verdict(headers, query.encode(), traefik=True) == expected


def _envoy(host: str, path: str, headers: dict[str, str] | None = None) -> attrs.AttributeContext.HttpRequest:
    return attrs.AttributeContext.HttpRequest(method="GET", scheme="https", host=host, path=path, headers=headers)


def test_envoy_routed_host_is_the_attribute_not_a_header() -> None:
    http = _envoy(H1, "/x?y=1", {"x-original-url": f"https://{H2}/", "x-forwarded-host": H2, "host": H2,
                                 ":authority": H2})
    assert url_of(http) == f"https://{H1}/x?y=1"
    assert parse_original_url(url_of(http) or "").host == H1
    # A joined duplicate Host, or an authority that would run into the path, is no URL at all.
    with pytest.raises(BadURL):
        parse_original_url(url_of(_envoy(f"{H1},{H2}", "/")) or "")
    for host in (f"{H1}/x", f"{H2}@{H1}", f"{H1}?", f"{H1}#", f"{H2}\\{H1}"):
        assert url_of(_envoy(host, "/")) is None, host
    assert url_of(_envoy("", "/")) is None and url_of(_envoy(H1, "")) is None
