"""An ingress-nginx stand-in: nginx.conf rendered from the REAL Ingress objects, the way ingress-nginx's
nginx.tmpl renders them (controller-v1.15.1: rootfs/etc/nginx/template/nginx.tmpl and
internal/ingress/controller/template/template.go), for plain Debian nginx + the set-misc module.

Pure functions (objects in, text out), unit-tested in tests/edge/test_ingress_nginx_render.py; the
`ingress_nginx` fixture of tests/edge/conftest.py feeds them the objects kruise-game created.

What is reproduced, because the owner-only URL depends on it:
- one `server` per Ingress host (`server_name <host>`), plus a default server (unknown host, or an
  HTTP/1.0 request without Host) that answers 404 from the default backend;
- locations per path and pathType: `ImplementationSpecific` (and a missing pathType) is `Prefix`
  (k8s.SetDefaultNGINXPathType); `Exact` -> `location = "p"`; `Prefix` "/p" -> `location "/p/"` and
  `location = "/p"` (updateServerLocations); every host also gets the annotated default
  `location "/"` (404 from the default backend, behind the same auth) unless a rule defines "/";
- `auth-url`: `auth_request` to `location = /_external-auth-<base64url(path)>-<pathType>`, with
  ingress-nginx's headers (`X-Original-URL $scheme://$http_host$request_uri` — the raw Host header —,
  `X-Original-Method`, `X-Sent-From`, `X-Auth-Request-Redirect`, Host of the auth-url without port ...)
  and `set $target "<auth-url>"; proxy_pass $target;`, so nginx expands variables such as `$host`;
- `auth-signin`: `error_page 401 = @<sha1(path+signin)>`, which answers
  `302 <signin>?rd=$pass_access_scheme://$http_host$escaped_request_uri` (buildAuthSignURL; `&rd=` when
  the sign-in URL has a query; none added when it already names `rd`);
- `auth-response-headers`: for each named header `auth_request_set $authHeaderN
  $upstream_http_<name>; proxy_set_header '<Name>' $authHeaderN;` — the auth answer's value, and an
  empty value (header removed) when the answer lacks it. A header NOT named passes from the client
  to the backend unchanged, exactly as through ingress-nginx;
- the upstream is the Service's ready endpoints (EndpointSlices), i.e. pod IPs and target ports; no
  ready endpoint -> 503 (after auth, as ingress-nginx's balancer does);
- the main location's proxy headers (Host $http_host, X-Forwarded-*, X-Request-ID, X-Real-IP ...);
- an Ingress whose auth annotations fail ingress-nginx's validation is not configured at all.
Not reproduced: TLS, Lua (auth keepalive, auth cache, canary, rate limits), snippets, rewrites, regex
paths, CORS; none of it is on the instances' Ingresses.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

INGRESS_CLASS = "nginx"
A = "nginx.ingress.kubernetes.io/"
# parser.URLWithNginxVariableRegex and HeadersVariable of ingress-nginx's annotation validators.
_URL_WITH_VARIABLES = re.compile(r"^[\-._~a-zA-Z0-9/:, ,:?&=$]*$")
_HEADERS = re.compile(r"^[A-Za-z0-9\-_, ]*$")
_HEADER = re.compile(r"^[a-zA-Z\d\-_]+$")
# parser.SizeRegex: what the proxy-buffer-size annotation may say (else the default applies).
_SIZE = re.compile(r"^\d+[bkmg]?$", re.IGNORECASE)
DEFAULT_PROXY_BUFFER_SIZE = "4k"  # the controller's ConfigMap default (config.go)
_METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "CONNECT", "OPTIONS", "TRACE"}


class InvalidIngress(ValueError):
    """An annotation ingress-nginx would refuse (the Ingress is then not configured)."""


@dataclass(frozen=True)
class ExternalAuth:
    url: str
    signin: str = ""
    redirect_param: str = "rd"
    response_headers: tuple[str, ...] = ()
    method: str = ""

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""


@dataclass
class Location:
    path: str
    path_type: str  # Exact | Prefix (ImplementationSpecific is read as Prefix)
    upstream: str  # upstream name, or "" for the default backend
    auth: ExternalAuth | None
    namespace: str = ""
    ingress: str = ""
    service: str = ""
    service_port: str = ""
    exact: bool = False  # rendered as `location = ...`
    ingress_path: str = ""
    buffer_size: str = DEFAULT_PROXY_BUFFER_SIZE  # proxy-buffer-size: the location's and its auth location's


@dataclass
class Server:
    host: str
    locations: list[Location] = field(default_factory=list)


def parse_auth(annotations: dict[str, str]) -> ExternalAuth | None:
    """authreq.Parse: None without auth-url; InvalidIngress when a value fails validation."""
    url = (annotations.get(A + "auth-url") or "").strip()
    if not url:
        return None
    if not _URL_WITH_VARIABLES.match(url):
        raise InvalidIngress(f"auth-url {url!r} has characters ingress-nginx refuses")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidIngress(f"auth-url {url!r} is not an http(s) URL")
    signin = (annotations.get(A + "auth-signin") or "").strip()
    if signin and not _URL_WITH_VARIABLES.match(signin):
        signin = ""  # ingress-nginx logs a warning and leaves auth-signin unset
    method = (annotations.get(A + "auth-method") or "").strip()
    if method and method not in _METHODS:
        raise InvalidIngress(f"auth-method {method!r}")
    headers_value = annotations.get(A + "auth-response-headers") or ""
    if not _HEADERS.match(headers_value):
        raise InvalidIngress("invalid auth-response-headers")
    headers = tuple(h.strip() for h in headers_value.split(",") if h.strip())
    if any(not _HEADER.match(h) for h in headers):
        raise InvalidIngress("invalid headers list")
    param = (annotations.get(A + "auth-signin-redirect-param") or "").strip() or "rd"
    return ExternalAuth(url, signin, param, headers, method)


def parse_buffer_size(annotations: dict[str, str]) -> str:
    """proxy.Parse's BufferSize: the annotation when it passes parser.SizeRegex, else the default."""
    value = (annotations.get(A + "proxy-buffer-size") or "").strip()
    return value if _SIZE.match(value) else DEFAULT_PROXY_BUFFER_SIZE


def _service_upstreams(services: list[dict], slices: list[dict]) -> dict[tuple[str, str, str], list[str]]:
    """(namespace, service, port number or name) -> ["ip:targetPort", ...] of ready endpoints."""
    result: dict[tuple[str, str, str], list[str]] = {}
    for svc in services:
        ns, name = svc["metadata"]["namespace"], svc["metadata"]["name"]
        for port in svc.get("spec", {}).get("ports") or []:
            port_name = port.get("name") or ""
            addresses = []
            for sl in slices:
                meta = sl["metadata"]
                if meta.get("namespace") != ns or (meta.get("labels") or {}).get(
                        "kubernetes.io/service-name") != name:
                    continue
                target = next((p.get("port") for p in sl.get("ports") or []
                               if (p.get("name") or "") == port_name), None)
                if target is None:
                    continue
                for ep in sl.get("endpoints") or []:
                    if (ep.get("conditions") or {}).get("ready") is False:
                        continue
                    addresses += [f"{a}:{target}" for a in ep.get("addresses") or []]
            for key in {str(port["port"]), port_name} - {""}:
                result[(ns, name, key)] = sorted(set(addresses))
    return result


def build_servers(ingresses: list[dict], services: list[dict], slices: list[dict]
                  ) -> tuple[list[Server], dict[str, list[str]]]:
    """createServers + updateServerLocations: the servers and the upstreams they use."""
    endpoints = _service_upstreams(services, slices)
    servers: dict[str, Server] = {}
    upstreams: dict[str, list[str]] = {}
    ordered = sorted((i for i in ingresses if (i.get("spec") or {}).get("ingressClassName") == INGRESS_CLASS),
                     key=lambda i: (i["metadata"].get("creationTimestamp") or "", i["metadata"]["namespace"],
                                    i["metadata"]["name"]))
    for ing in ordered:
        meta = ing["metadata"]
        try:
            auth = parse_auth(meta.get("annotations") or {})
        except InvalidIngress:
            continue
        buffer_size = parse_buffer_size(meta.get("annotations") or {})
        for rule in ing["spec"].get("rules") or []:
            host = rule.get("host") or "_"
            server = servers.get(host)
            if server is None:
                # The annotated default root location (createServers: locationApplyAnnotations).
                server = servers[host] = Server(host, [Location("/", "Prefix", "", auth, meta["namespace"],
                                                                meta["name"], buffer_size=buffer_size)])
            for path in (rule.get("http") or {}).get("paths") or []:
                backend = path["backend"]["service"]
                port = str(backend["port"].get("number") or backend["port"].get("name"))
                ns = meta["namespace"]
                upstream = f"{ns}-{backend['name']}-{port}"
                upstreams[upstream] = endpoints.get((ns, backend["name"], port), [])
                path_type = path.get("pathType") or "Prefix"
                if path_type == "ImplementationSpecific":
                    path_type = "Prefix"  # k8s.SetDefaultNGINXPathType
                loc = Location(path.get("path") or "/", path_type, upstream, auth, ns, meta["name"], backend["name"],
                               port, buffer_size=buffer_size)
                existing = [x for x in server.locations if x.path == loc.path and x.path_type == loc.path_type]
                if existing and existing[0].upstream:
                    continue  # the older Ingress keeps the path
                if existing:  # replaces the default root location
                    server.locations.remove(existing[0])
                server.locations.append(loc)
    for server in servers.values():
        server.locations = _update_locations(server.locations)
    return list(servers.values()), upstreams


def _update_locations(locations: list[Location]) -> list[Location]:
    exact = {loc.path for loc in locations if loc.path_type == "Exact"}
    result = []
    for loc in locations:
        loc.ingress_path = loc.path
        if loc.path_type == "Exact":
            loc.exact = True
        if loc.path == "/" or loc.path_type != "Prefix":
            result.append(loc)
            continue
        plain = Location(**{**loc.__dict__})
        if not loc.path.endswith("/"):
            loc.path += "/"
        result.append(loc)
        if plain.path not in exact:
            plain.path_type, plain.exact = "Exact", True
            result.append(plain)
    # ingress-nginx sorts locations by path, longest first (nginx's own matching decides anyway).
    return sorted(result, key=lambda x: (-len(x.path), x.path, not x.exact))


def _q(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def auth_location(loc: Location) -> str:
    """buildAuthLocation."""
    encoded = base64.urlsafe_b64encode(loc.path.encode()).decode().rstrip("=")
    return f"/_external-auth-{encoded}-{loc.path_type}"


def signin_location(loc: Location, signin: str) -> str:
    """buildAuthSignURLLocation."""
    return "@" + hashlib.sha1((loc.path + signin).encode()).hexdigest()  # noqa: S324 - ingress-nginx's name


def signin_url(signin: str, param: str) -> str:
    """buildAuthSignURL."""
    query = parse_qs(urlsplit(signin).query)
    if not query:
        return f"{signin}?{param}=$pass_access_scheme://$http_host$escaped_request_uri"
    if query.get(param, [""])[0]:
        return signin
    return f"{signin}&{param}=$pass_access_scheme://$http_host$escaped_request_uri"


def render_location(loc: Location, backends: dict[str, str]) -> str:
    out: list[str] = []
    auth = loc.auth
    if auth is not None:
        out.append(f"""
        location = {auth_location(loc)} {{
            internal;
            access_log off;
            proxy_intercept_errors off;
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            proxy_set_header X-Forwarded-Proto "";
            proxy_set_header X-Request-ID $req_id;""")
        if auth.method:
            out.append(f"""            proxy_method {auth.method};
            proxy_set_header X-Original-URI $request_uri;
            proxy_set_header X-Scheme $pass_access_scheme;""")
        out.append(f"""            proxy_set_header Host {auth.host};
            proxy_set_header X-Original-URL $scheme://$http_host$request_uri;
            proxy_set_header X-Original-Method $request_method;
            proxy_set_header X-Sent-From "nginx-ingress-controller";
            proxy_set_header X-Real-IP $remote_addr;
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_set_header X-Auth-Request-Redirect $request_uri;
            proxy_buffering off;
            proxy_buffer_size {loc.buffer_size};
            proxy_buffers 4 {loc.buffer_size};
            proxy_request_buffering on;
            proxy_ssl_server_name on;
            proxy_pass_request_headers on;
            client_max_body_size 1m;
            proxy_http_version 1.1;
            set $target {_q(auth.url)};
            proxy_pass $target;
        }}""")
        if auth.signin:
            out.append(f"""
        location {signin_location(loc, auth.signin)} {{
            internal;
            add_header Set-Cookie $auth_cookie;
            return 302 {signin_url(auth.signin, auth.redirect_param)};
        }}""")
    where = f'= {_q(loc.path)}' if loc.exact else _q(loc.path)
    upstream = backends.get(loc.upstream, "default_backend")
    out.append(f"""
        location {where} {{
            set $namespace {_q(loc.namespace)};
            set $ingress_name {_q(loc.ingress)};
            set $service_name {_q(loc.service)};
            set $service_port {_q(loc.service_port)};
            set $location_path {_q(loc.ingress_path.replace("$", "${literal_dollar}"))};
            port_in_redirect off;
            set $proxy_upstream_name {_q(loc.upstream or "upstream-default-backend")};
            set $proxy_host $proxy_upstream_name;
            set $pass_access_scheme $scheme;
            set $pass_server_port $server_port;
            set $best_http_host $http_host;
            set $pass_port $pass_server_port;""")
    if auth is not None:
        out.append(f"""            # this location requires authentication
            auth_request {auth_location(loc)};
            auth_request_set $auth_cookie $upstream_http_set_cookie;
            add_header Set-Cookie $auth_cookie;""")
        for i, name in enumerate(auth.response_headers):
            var = name.lower().replace("-", "_")
            out.append(f"""            auth_request_set $authHeader{i} $upstream_http_{var};
            proxy_set_header '{name}' $authHeader{i};""")
        if auth.signin:
            out.append(f"""            set_escape_uri $escaped_request_uri $request_uri;
            error_page 401 = {signin_location(loc, auth.signin)};""")
    out.append(f"""            client_max_body_size 1m;
            proxy_set_header Host $best_http_host;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header X-Request-ID $req_id;
            proxy_set_header X-Real-IP $remote_addr;
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_set_header X-Forwarded-Host $best_http_host;
            proxy_set_header X-Forwarded-Port $pass_port;
            proxy_set_header X-Forwarded-Proto $pass_access_scheme;
            proxy_set_header X-Forwarded-Scheme $pass_access_scheme;
            proxy_set_header X-Scheme $pass_access_scheme;
            proxy_set_header X-Original-Forwarded-For $http_x_forwarded_for;
            proxy_set_header X-Original-Forwarded-Host $http_x_forwarded_host;
            proxy_set_header Proxy "";
            proxy_connect_timeout 5s;
            proxy_send_timeout 60s;
            proxy_read_timeout 60s;
            proxy_buffering off;
            proxy_buffer_size {loc.buffer_size};
            proxy_buffers 4 {loc.buffer_size};
            proxy_request_buffering on;
            proxy_http_version 1.1;
            proxy_cookie_domain off;
            proxy_cookie_path off;
            proxy_next_upstream error timeout;
            proxy_next_upstream_timeout 0;
            proxy_next_upstream_tries 3;
            proxy_pass http://{upstream};
            proxy_redirect off;
        }}""")
    return "\n".join(out)


def render_http(ingresses: list[dict], services: list[dict], slices: list[dict], *, listen: str,
                internal_prefix: str) -> str:
    """The servers and upstreams of an http block. `internal_prefix`: a directory for the unix
    sockets of the default backend (404) and of the "no endpoints" backend (503)."""
    servers, upstreams = build_servers(ingresses, services, slices)
    default_sock = f"unix:{internal_prefix}/default-backend.sock"
    unavailable_sock = f"unix:{internal_prefix}/unavailable.sock"
    blocks = [f"""
    upstream default_backend {{
        server {default_sock};
    }}
    upstream unavailable {{
        server {unavailable_sock};
    }}
    server {{
        listen {default_sock};
        location / {{ return 404; }}
    }}
    server {{
        listen {unavailable_sock};
        location / {{ return 503; }}
    }}"""]
    names: dict[str, str] = {}
    for name, addresses in sorted(upstreams.items()):
        ident = "u_" + re.sub(r"[^A-Za-z0-9_]", "_", name)
        names[name] = ident
        lines = "".join(f"\n        server {a};" for a in addresses) or "\n        server unix:" + \
            f"{internal_prefix}/unavailable.sock;"
        blocks.append(f"""
    upstream {ident} {{{lines}
        keepalive 32;
    }}""")
    blocks.append(f"""
    server {{
        listen {listen} default_server;
        server_name _;
        location / {{
            proxy_set_header Host $http_host;
            proxy_pass http://default_backend;
        }}
    }}""")
    for server in sorted(servers, key=lambda s: s.host):
        if server.host == "_":
            continue
        body = "".join(render_location(loc, names) for loc in server.locations)
        blocks.append(f"""
    server {{
        server_name {server.host};
        listen {listen};
        set $proxy_upstream_name "-";
{body}
    }}""")
    return "\n".join(blocks)


def render_conf(http: str, *, prefix: str, run_as_root: bool) -> str:
    """A whole nginx.conf around `render_http`'s output, with ingress-nginx's http-level defaults
    that matter here (no underscores in header names, invalid headers ignored, $req_id, upgrades)."""
    return f"""{'user root;' if run_as_root else ''}
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log notice;
load_module /usr/lib/nginx/modules/ndk_http_module.so;
load_module /usr/lib/nginx/modules/ngx_http_set_misc_module.so;
events {{ worker_connections 1024; }}
http {{
    access_log {prefix}/access.log;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    server_tokens off;
    underscores_in_headers off;
    ignore_invalid_headers on;
    server_names_hash_bucket_size 128;
    map $http_x_request_id $req_id {{
        default $http_x_request_id;
        "" $request_id;
    }}
    map $http_upgrade $connection_upgrade {{
        default upgrade;
        "" "";
    }}
    geo $literal_dollar {{ default "$"; }}
{http}
}}
"""
