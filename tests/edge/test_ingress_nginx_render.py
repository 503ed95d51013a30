"""The ingress-nginx stand-in's renderer (tests/plugins/ingress_nginx.py): what it renders for the
Ingress objects kruise-game creates, checked against ingress-nginx's template, and accepted by real nginx."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.plugins.ingress_nginx import (
    A,
    InvalidIngress,
    auth_location,
    build_servers,
    parse_auth,
    render_conf,
    render_http,
    signin_location,
    signin_url,
)

AUTH = "http://127.0.0.1:9000/auth?rh=$host"
SIGNIN = "http://dashboard.aigc.test:8080/sign-in"


def ingress(name: str, host: str, path: str = "/", path_type: str = "ImplementationSpecific",
            annotations: dict | None = None, klass: str = "nginx", port: int = 7860) -> dict:
    """The shape kruise-game's Kubernetes-Ingress plugin creates (Ingress and Service named after the pod)."""
    return {"metadata": {"name": name, "namespace": "ns", "creationTimestamp": "2026-12-03T00:00:00Z",
                         "annotations": {A + "auth-url": AUTH, A + "auth-signin": SIGNIN} | (annotations or {})},
            "spec": {"ingressClassName": klass, "rules": [{"host": host, "http": {"paths": [
                {"path": path, "pathType": path_type,
                 "backend": {"service": {"name": name, "port": {"number": port}}}}]}}]}}


def service(name: str, port: int = 7860) -> dict:
    return {"metadata": {"name": name, "namespace": "ns"},
            "spec": {"ports": [{"name": "", "port": port, "targetPort": port}]}}


def endpoint_slice(name: str, ip: str, port: int = 7860, ready: bool = True) -> dict:
    return {"metadata": {"name": name + "-abc", "namespace": "ns", "labels": {"kubernetes.io/service-name": name}},
            "ports": [{"name": "", "port": port, "protocol": "TCP"}],
            "endpoints": [{"addresses": [ip], "conditions": {"ready": ready},
                           "targetRef": {"kind": "Pod", "namespace": "ns", "name": name}}]}


def render(ingresses, services=(), slices=()) -> str:
    return render_http(list(ingresses), list(services), list(slices), listen="127.0.0.1:8080",
                       internal_prefix="/tmp/x")


def test_instance_ingress_renders_auth_signin_and_pod_upstream() -> None:
    text = render([ingress("sd-0", "instances0-cpu.aigc.test")], [service("sd-0")],
                  [endpoint_slice("sd-0", "127.100.0.5")])
    assert "server_name instances0-cpu.aigc.test;" in text
    assert "server 127.100.0.5:7860;" in text
    loc = auth_location(build_servers([ingress("sd-0", "h")], [], [])[0][0].locations[0])
    assert loc == "/_external-auth-Lw-Prefix"  # base64url("/"); ImplementationSpecific is read as Prefix
    assert f"location = {loc} {{" in text and f"auth_request {loc};" in text
    # nginx expands $host itself; the URL in X-Original-URL is the raw Host header, as in ingress-nginx.
    assert 'set $target "http://127.0.0.1:9000/auth?rh=$host";\n            proxy_pass $target;' in text
    assert "proxy_set_header X-Original-URL $scheme://$http_host$request_uri;" in text
    assert "proxy_set_header Host 127.0.0.1;" in text
    assert (f"return 302 {SIGNIN}?rd=$pass_access_scheme://$http_host$escaped_request_uri;") in text
    assert "error_page 401 = @" in text
    # No auth-response-headers: nothing is set from the auth answer.
    assert "X-Auth-Request-User" not in text


def test_path_types_follow_update_server_locations() -> None:
    servers, _ = build_servers([
        ingress("a", "h", "/app", "Prefix"), ingress("b", "h", "/exact", "Exact"),
        ingress("c", "h", "/impl", "ImplementationSpecific")], [], [])
    locs = {(x.path, x.exact) for x in servers[0].locations}
    # Prefix /app -> prefix /app/ plus exact /app; ImplementationSpecific is Prefix; the annotated default
    # root location stays.
    assert locs == {("/app/", False), ("/app", True), ("/exact", True), ("/impl/", False), ("/impl", True),
                    ("/", False)}
    text = render([ingress("a", "h", "/app", "Prefix")])
    assert 'location "/app/" {' in text and 'location = "/app" {' in text
    root = [x for x in servers[0].locations if x.path == "/"][0]
    assert root.upstream == "" and root.auth is not None  # 404 from the default backend, behind auth


def test_response_headers_only_when_named() -> None:
    headers = {A + "auth-response-headers": "X-Auth-Request-User, X-Auth-Request-Email"}
    text = render([ingress("a", "h", annotations=headers)])
    assert "auth_request_set $authHeader0 $upstream_http_x_auth_request_user;" in text
    assert "proxy_set_header 'X-Auth-Request-User' $authHeader0;" in text
    assert "proxy_set_header 'X-Auth-Request-Email' $authHeader1;" in text


def test_no_ready_endpoint_is_503_after_auth() -> None:
    text = render([ingress("a", "h")], [service("a")], [endpoint_slice("a", "127.100.0.9", ready=False)])
    assert "upstream u_ns_a_7860 {\n        server unix:/tmp/x/unavailable.sock;" in text


def test_refused_annotations_and_other_classes_are_not_configured() -> None:
    with pytest.raises(InvalidIngress):
        parse_auth({A + "auth-url": 'http://a/auth";return 200;#'})
    with pytest.raises(InvalidIngress):
        parse_auth({A + "auth-url": "http://a/auth", A + "auth-response-headers": "X-A;B"})
    bad = ingress("bad", "bad.test", annotations={A + "auth-url": "http://a/auth?x=\"y\""})
    other = ingress("other", "other.test", klass="traefik")
    assert build_servers([bad, other], [], [])[0] == []


def test_signin_url_like_build_auth_sign_url() -> None:
    tail = "$pass_access_scheme://$http_host$escaped_request_uri"
    assert signin_url("https://d/sign-in", "rd") == f"https://d/sign-in?rd={tail}"
    assert signin_url("https://d/sign-in?x=1", "rd") == f"https://d/sign-in?x=1&rd={tail}"
    assert signin_url("https://d/sign-in?rd=https://d/", "rd") == "https://d/sign-in?rd=https://d/"
    loc = build_servers([ingress("a", "h")], [], [])[0][0].locations[0]
    assert signin_location(loc, SIGNIN).startswith("@") and len(signin_location(loc, SIGNIN)) == 41


@pytest.mark.skipif(not shutil.which("nginx"), reason="nginx is not installed (scripts/setup.d/30-nginx.sh)")
def test_real_nginx_accepts_the_rendered_configuration(tmp_path: Path) -> None:
    http = render_http([
        ingress("sd-0", "instances0-cpu.aigc.test", annotations={A + "auth-response-headers": "X-Auth-Request-User"}),
        ingress("sd-1", "instances1-cpu.aigc.test", "/p", "Prefix")],
        [service("sd-0")], [endpoint_slice("sd-0", "127.100.0.5")], listen="127.0.0.1:18999",
        internal_prefix=str(tmp_path))
    conf = tmp_path / "nginx.conf"
    conf.write_text(render_conf(http, prefix=str(tmp_path), run_as_root=os.geteuid() == 0))
    check = subprocess.run(["nginx", "-t", "-p", str(tmp_path), "-c", str(conf)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
