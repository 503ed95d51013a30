"""The one resource name usersync alone accepts: a Logto user (``users/{id}`` or the bare id).

Template and instance names are the core's (:mod:`aigc_gateway.names`), shared with every service.
"""
from __future__ import annotations

from aigc_gateway.errors import invalid


def parse_user(value: str, field: str = "user") -> str:
    """A Logto user id (also accepted as ``users/{id}``)."""
    user = value[len("users/"):] if value.startswith("users/") else value
    if not user or len(user) > 255 or "/" in user or not user.isprintable() or user.strip() != user:
        raise invalid(field, "must be a Logto user id")
    return user
