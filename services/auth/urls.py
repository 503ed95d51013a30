"""What URL a check is about, and where a sign-in may send the browser back to (pure).

The ingress tells us the URL as ``X-Original-URL = $scheme://$http_host$request_uri``:
the client's Host header and the raw request target, neither normalised. nginx
itself routes on the lower-cased Host without port or trailing dot, and on the
percent-decoded, slash-merged, dot-resolved path. A decision is only sound when
it is made about the very host and path nginx routes on, so anything that
nginx and a URL parser could read differently (userinfo, a ``?`` or ``#`` inside
the authority, a backslash, a percent sign in the host, control characters) is
refused here instead of guessed at.

Even a perfectly read ``X-Original-URL`` names the client's Host header, not
the host nginx routed on (an absolute-form request line routes elsewhere), so
``/auth`` also requires the routed host, which the template's auth-url carries
as ``?rh=$host``, and refuses when the two differ (:func:`bind_routed_host`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import unquote_to_bytes, urlsplit

import idna

_HOST_LABELS = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$")
_IPV6 = re.compile(r"^\[[0-9a-f:.]+\]$")
_PERCENT = re.compile(rb"%(?![0-9A-Fa-f]{2})")
_CONTROL = re.compile(r"[\x00-\x20\x7f\\]")
MAX_URL = 8192
_ENCODED_SEPARATOR = re.compile(r"%(2[fF]|5[cC]|25)")


class BadURL(ValueError):
    """The URL cannot be the one nginx routed: the check denies."""


@dataclass(frozen=True)
class Target:
    """The normalised host and path of an instance URL."""

    scheme: str  # "http" | "https"
    host: str  # lower case, ASCII (IDNA A-labels), no port, no trailing dot
    path: str  # decoded, no empty or dot segments, starts with "/"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}{self.path}"


# Both normalisations are pure and see the same few thousand hosts and paths over and over (every click
# on an instance repeats its host); remembering recent answers takes them off the hot path. Refusals raise
# and are not remembered, so junk costs what it always did; the bound keeps a flood of distinct values
# from growing memory.
@lru_cache(maxsize=16384)
def normalise_host(raw: str) -> str:
    """The host as nginx routes on it: lower case, without port and trailing dot; IDNA A-labels.

    Raises :class:`BadURL` for anything that is not a plain DNS name or IP literal."""
    host = raw
    if not host or len(host) > 300 or "@" in host or "%" in host or _CONTROL.search(host):
        raise BadURL("invalid host")
    if host.startswith("["):  # IPv6 literal, optionally with a port
        end = host.find("]")
        if end < 0:
            raise BadURL("invalid host")
        literal, rest = host[:end + 1].lower(), host[end + 1:]
        if rest and not (rest.startswith(":") and _valid_port(rest[1:])):
            raise BadURL("invalid port")
        if not _IPV6.match(literal):
            raise BadURL("invalid host")
        return literal
    name, colon, port = host.rpartition(":") if ":" in host else (host, "", "")
    if colon and not _valid_port(port):
        raise BadURL("invalid port")
    if name.endswith("."):
        name = name[:-1]
    if not name.isascii():
        # Browsers send A-labels; strict IDNA 2008 (no UTS 46 mapping) so that look-alike or
        # width-variant spellings never fold onto another host.
        try:
            name = idna.encode(name, uts46=False).decode("ascii")
        except idna.IDNAError as exc:
            raise BadURL("invalid internationalised host") from exc
    name = name.lower()
    if not _HOST_LABELS.match(name):
        raise BadURL("invalid host")
    return name


def _valid_port(port: str) -> bool:
    return port.isdigit() and port.isascii() and len(port) <= 5 and 0 < int(port) < 65536


@lru_cache(maxsize=16384)
def normalise_path(raw: str) -> str:
    """The path as nginx matches locations: percent-decoded, ``//`` merged, ``.``/``..`` resolved.

    ``..`` above the root, a NUL, invalid percent escapes or invalid UTF-8 raise :class:`BadURL`
    (nginx answers 400 to those and never routes them)."""
    if not raw.startswith("/"):
        raise BadURL("the path must start with /")
    data = raw.encode("utf-8", "surrogateescape")
    if _PERCENT.search(data):
        raise BadURL("invalid percent escape")
    decoded = unquote_to_bytes(data)
    if b"\x00" in decoded:
        raise BadURL("NUL in path")
    try:
        text = decoded.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadURL("path is not UTF-8") from exc
    out: list[str] = []
    for segment in text.split("/")[1:]:
        if segment in ("", "."):
            continue
        if segment == "..":
            if not out:
                raise BadURL("path escapes the root")
            out.pop()
            continue
        out.append(segment)
    trailing = text.endswith(("/", "/.", "/..")) and bool(out)
    return "/" + "/".join(out) + ("/" if trailing else "")


def parse_original_url(value: str) -> Target:
    """Parse ``X-Original-URL`` strictly; see the module docstring for why strictly."""
    if not value or len(value) > MAX_URL or _CONTROL.search(value):
        raise BadURL("invalid URL")
    if "#" in value:
        raise BadURL("a fragment is never part of a request")  # browsers do not send one
    # Only the scheme, host and path decide, never the query: without it the same few thousand
    # URLs repeat (every click on an instance), and their parse is remembered (see _parse_base).
    base, question_mark, _ = value.partition("?")
    return _parse_base(base, bool(question_mark))


@lru_cache(maxsize=16384)
def _parse_base(base: str, had_query: bool) -> Target:
    """``base`` is an X-Original-URL up to its first ``?`` (no ``#``, no control characters)."""
    try:
        parts = urlsplit(base)
    except ValueError as exc:  # e.g. an unclosed IPv6 bracket
        raise BadURL("invalid URL") from exc
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise BadURL("the scheme must be http or https")
    # The authority must be exactly what followed "//" up to the path: a "?" right after the
    # host means the Host header itself carried it, and nginx routed on something else.
    prefix = f"{parts.scheme}://{parts.netloc}"
    if not base.startswith(prefix):
        raise BadURL("invalid URL")
    rest = base[len(prefix):]
    if (rest and not rest.startswith("/")) or (not rest and had_query):
        raise BadURL("the request target must start with /")
    return Target(scheme=scheme, host=normalise_host(parts.netloc), path=normalise_path(parts.path or "/"))


class RoutedHostRefused(BadURL):
    """The host the proxy routed on is missing, ambiguous or not the host of the URL: the check refuses."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


ROUTED_HOST_MISSING = "ROUTED_HOST_MISSING"
ROUTED_HOST_MISMATCH = "ROUTED_HOST_MISMATCH"


def routed_host_of(query: bytes) -> str | None:
    """The ``rh`` parameter of ``/auth``'s own query string, exactly as the proxy expanded ``$host`` into it.

    Not percent-decoded: nginx and Traefik put ``$host`` in verbatim, so an escape here is the client's and
    :func:`normalise_host` refuses it. None when absent or given more than once (a Host header with ``&rh=``
    in it would otherwise choose)."""
    if b"rh=" not in query:
        return None
    found = [item[3:] for item in query.split(b"&") if item.startswith(b"rh=")]
    return found[0].decode("utf-8", "surrogateescape") if len(found) == 1 else None


def bind_routed_host(target: Target, routed_host: str | None) -> None:
    """Raise :class:`RoutedHostRefused` unless ``routed_host`` normalises to ``target.host``.

    ``target`` comes from headers that hold the client's Host (``X-Original-URL``) or a host the proxy
    set (``X-Forwarded-Host``); ``routed_host`` is what the proxy routed on (``$host`` expanded into the
    auth-url), so a request line naming another instance than its Host header is refused here."""
    if routed_host is None:
        raise RoutedHostRefused(ROUTED_HOST_MISSING, "the auth-url carries no single rh=$host (the routed host)")
    try:
        routed = normalise_host(routed_host)
    except BadURL as exc:
        raise RoutedHostRefused(ROUTED_HOST_MISMATCH, "the routed host is not a valid host") from exc
    if routed != target.host:
        raise RoutedHostRefused(ROUTED_HOST_MISMATCH, "the host the proxy routed on is not the request's host")


def forwarded_url(proto: str, host: str, uri: str) -> str:
    """``X-Forwarded-Proto/-Host/-Uri`` (Traefik forwardAuth) as one URL, for :func:`parse_original_url`."""
    scheme = (proto or "https").strip().lower()
    uri = uri or "/"
    if not uri.startswith("/"):
        return ""  # the host would run on into the path: unreadable (Traefik always sends a leading /)
    if "%" in uri and _ENCODED_SEPARATOR.search(uri.partition("?")[0]):
        # Traefik refuses these by default; where a deployment allows them, whether it routed on the
        # decoded or the encoded form is not ours to guess (normalise_path decodes them as nginx does).
        return ""
    return f"{scheme}://{host.strip()}{uri}"


def host_in_domain(host: str, domain: str) -> bool:
    return host == domain or host.endswith("." + domain)


def safe_redirect(candidate: str | None, *, domain: str, allow_http: bool, fallback: str) -> str:
    """``candidate`` when it is an absolute http(s) URL into ``domain`` (https only unless
    ``allow_http``), else ``fallback``: no open redirect, no ``//evil``, no ``javascript:``."""
    # ASCII only: the proxies build rd from the Host header and the escaped request URI, and a Location
    # header is sent as latin-1 (a wider character there made the sign-in callback answer 500).
    if (not candidate or len(candidate) > MAX_URL or not candidate.isascii() or _CONTROL.search(candidate)
            or "\\" in candidate):
        return fallback
    try:
        parts = urlsplit(candidate)
        if parts.scheme not in ("https", "http") or (parts.scheme == "http" and not allow_http):
            return fallback
        if not candidate.startswith(f"{parts.scheme}://{parts.netloc}"):
            return fallback
        host = normalise_host(parts.netloc)
        normalise_path(parts.path or "/")
    except (BadURL, ValueError):
        return fallback
    if not host_in_domain(host, normalise_host(domain)):
        return fallback
    return candidate
