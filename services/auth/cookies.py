"""What of the browser's Cookie header may reach an instance pod: everything but the gateway's own cookies.

The gateway's cookies live on the shared parent domain (``Domain=<domain>``), so the browser sends them to
every instance host, and both proxies pass the client's ``Cookie`` header to the pod unchanged: the code in
a user's image (a ComfyUI custom node, anything) would read the session of whoever opens the instance, its
owner's, and an admin's with ``auth.allow_admin_access``. So ``/auth`` answers an allowed check with a
``Cookie`` header holding the request's cookies minus the gateway's, and every template names ``Cookie`` in
``auth-response-headers``: the proxy then replaces the client's header with the answer's, and sends none at
all when the answer has none (nginx: ``proxy_set_header`` with an empty value; Traefik: the client's header is
deleted and set only when the answer has it). So the answer carries no ``Cookie`` header when nothing is
left: an empty one would reach the pod through Traefik as ``Cookie:`` with no value.

A cookie is the gateway's by the same reading :func:`aigc_gateway.sessions.cookie_values` uses to find the
session (split on ``;``, the name trimmed, compared exactly), so whatever ``/auth`` would read as a session
never reaches the pod, and a cookie whose name only starts like ours (``aigc_session2``) is the instance's.
Pure.
"""
from __future__ import annotations

from collections.abc import Iterable

SIGNIN_SUFFIX = "_signin"  # the sign-in flow's state cookie: ``<cookie_name>_signin`` (services/auth/endpoints.py)


def gateway_cookie_names(cookie_name: str) -> frozenset[str]:
    """Every cookie the gateway's auth flow sets: the session cookie and the sign-in state cookie. The
    latter is host-only on the dashboard with ``Path=/sign-in-callback`` (a browser never sends it to an
    instance), removed anyway: a name the gateway reads is never the instance's to see."""
    return frozenset({cookie_name, cookie_name + SIGNIN_SUFFIX})


def without_gateway_cookies(headers: Iterable[str], names: frozenset[str]) -> str:
    """The cookies of ``headers`` (one value per Cookie header the client sent, in order) except those named
    in ``names``, joined with ``"; "`` (how HTTP/2 and RFC 6265 join several); ``""`` when none is left.
    Each kept cookie is passed as sent (its value untouched, quotes and inner spaces included); only the
    whitespace around it and empty pieces (``;;``) go."""
    kept = []
    for header in headers:
        for part in header.split(";"):
            piece = part.strip(" \t")  # HTTP's whitespace only: a kept cookie is otherwise passed as sent
            # The name trimmed as cookie_values trims it: what /auth would read as a session never passes.
            if piece and piece.partition("=")[0].strip() not in names:
                kept.append(piece)
    return "; ".join(kept)
