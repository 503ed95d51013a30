"""Opaque page tokens (AIP-158), bound to the request filters they were issued for.

A token carries the position after the last item returned (a keyset, not an
offset, so pages stay stable while rows are added) and a fingerprint of the
filters; a token replayed with other filters is refused.
"""
from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

from .errors import invalid


def fingerprint(*filters: Any) -> str:
    return hashlib.sha256(repr(filters).encode()).hexdigest()[:16]


def clamp(page_size: int, default: int, maximum: int) -> int:
    if page_size < 0:
        raise invalid("page_size", "must not be negative")
    return default if page_size == 0 else min(page_size, maximum)


def encode(position: Any, bound_to: str) -> str:
    raw = json.dumps({"p": position, "f": bound_to}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode(token: str, bound_to: str) -> Any:
    """The position stored in ``token``; INVALID_ARGUMENT on `page_token` when it is not ours or not for these filters."""
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        position, issued_for = data["p"], str(data["f"])
    except (ValueError, KeyError, TypeError):
        raise invalid("page_token", "not a page token this server issued") from None
    if issued_for != bound_to:
        raise invalid("page_token", "the request's filters changed since this page token was issued")
    return position
