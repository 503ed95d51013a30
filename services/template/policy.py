"""What the configuration says a template must be: one immutable value built from Settings.

The pure rules (validation, normalisation, description) take a :class:`Policy`
instead of the whole Settings, so their tests build one literally.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aigc_gateway import okg
from aigc_gateway.config import Settings

from .network import with_routed_host

AUTH_URL_ANNOTATION = "nginx.ingress.kubernetes.io/auth-url"
AUTH_SIGNIN_ANNOTATION = "nginx.ingress.kubernetes.io/auth-signin"
AUTH_RESPONSE_HEADERS_ANNOTATION = "nginx.ingress.kubernetes.io/auth-response-headers"
# The auth answer's headers every template's proxy must copy to the instance. A header the annotation does not
# name passes from the client to the instance unchanged (ingress-nginx and Traefik alike), so without them a
# client's own `X-Auth-Request-User: bob` would reach the instance as if the gateway had said it.
IDENTITY_HEADERS = ("X-Auth-Request-User", "X-Auth-Request-Email")
# The browser sends the gateway's session cookie (Domain=<domain>) to every instance host. Named here, the proxy
# puts the auth answer's Cookie (the client's minus the gateway's cookies, none when nothing is left) in place of
# the client's, so code in a user's image never reads the session of whoever opens it (docs/auth.md).
COOKIE_HEADER = "Cookie"
# What every template's auth-response-headers names, in this order when the service adds them.
AUTH_RESPONSE_HEADERS = (*IDENTITY_HEADERS, COOKIE_HEADER)
# ingress-nginx reads the auth answer's headers into the auth location's proxy_buffer_size (4k by default): with
# the instance's own cookies in the answer, a Cookie header over ~3.7 KB made every request of its owner a 500.
# 16k holds any Cookie header nginx accepts from a client (large_client_header_buffers: 8k a line). Added when a
# template does not say; an admin's own value is kept. Traefik buffers nothing by default and ignores it.
PROXY_BUFFER_SIZE_ANNOTATION = "nginx.ingress.kubernetes.io/proxy-buffer-size"
PROXY_BUFFER_SIZE = "16k"


@dataclass(frozen=True)
class Policy:
    namespaces: tuple[str, ...] = ()  # empty: every namespace (the original config.json meaning)
    gss_labels: dict[str, str] = field(default_factory=dict)
    domain: str = "example.com"
    auth_url: str = ""
    auth_signin_url: str = ""
    annotation_prefix: str = "aigc.gateway.io/"
    max_manifest_bytes: int = 256 * 1024
    rollout_policy: str = "WHEN_IDLE"  # template.rollout_policy: the default when neither request nor template says
    rollout_idle_after_seconds: float = 900.0

    def __post_init__(self) -> None:
        # Derived defaults, so that a Policy built in a test behaves like one built from Settings.
        if not self.auth_url:
            object.__setattr__(self, "auth_url", f"https://dashboard.{self.domain}/auth")
        # The auth service refuses checks without the routed host (rh=$host), so every auth-url has it.
        object.__setattr__(self, "auth_url", with_routed_host(self.auth_url))
        if not self.auth_signin_url:
            object.__setattr__(self, "auth_signin_url", f"https://dashboard.{self.domain}/sign-in")

    @classmethod
    def from_settings(cls, settings: Settings) -> Policy:
        cfg = settings.template
        public = settings.auth.public_url.rstrip("/")
        return cls(
            namespaces=tuple(settings.namespaces),
            gss_labels=dict(settings.gss_labels),
            domain=settings.domain,
            auth_url=cfg.auth_url or (f"{public}/auth" if public else ""),
            auth_signin_url=cfg.auth_signin_url or (f"{public}/sign-in" if public else ""),
            annotation_prefix=cfg.annotation_prefix,
            max_manifest_bytes=cfg.max_manifest_bytes,
            rollout_policy=cfg.rollout_policy,
            rollout_idle_after_seconds=cfg.rollout_idle_after_seconds,
        )

    def namespace_allowed(self, namespace: str) -> bool:
        return okg.namespace_allowed(namespace, self.namespaces)

    @property
    def label_selector(self) -> str:
        return okg.label_selector(self.gss_labels)

    def is_template(self, gss: dict[str, Any]) -> bool:
        return okg.is_template(gss, self.namespaces, self.gss_labels)
