"""Where aigcctl finds the services and its credentials.

Later wins: built-in defaults (the dev stack's loopback ports), the config file
($AIGCCTL_CONFIG, else ~/.config/aigcctl/config.yaml), environment variables,
then flags. The token is never read from a flag: a flag is visible in `ps`.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .exitcodes import Exit, Failure

SERVICES = ("template", "instance", "auth", "usersync")
DEFAULT_ADDRESSES = {"template": "127.0.0.1:50061", "instance": "127.0.0.1:50062",
                     "auth": "127.0.0.1:50063", "usersync": "127.0.0.1:50064"}
CONFIG_KEYS = {"servers", "namespace", "token_file", "tls", "ca_file", "timeout_seconds"}


@dataclass
class CtlSettings:
    addresses: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_ADDRESSES))
    namespace: str = "default"
    namespace_flag: bool = False  # --namespace was given: it must agree with a manifest's own namespace
    token: str = field(default="", repr=False)
    token_source: str = ""  # where the token came from, for `aigcctl config` (never the token itself)
    tls: bool = False
    ca_file: str = ""
    timeout_seconds: float = 30.0
    config_file: str = ""

    def address(self, service: str) -> str:
        """AuditService is hosted by every server; it is asked at the template address unless set."""
        if service == "audit":
            return self.addresses.get("audit") or self.addresses["template"]
        return self.addresses[service]


def default_config_path(environ: Mapping[str, str]) -> Path:
    base = environ.get("XDG_CONFIG_HOME") or str(Path(environ.get("HOME", "~")).expanduser() / ".config")
    return Path(base) / "aigcctl" / "config.yaml"


def _read_config(path: Path, explicit: bool) -> dict[str, Any]:
    if not path.exists():
        if explicit:
            raise Failure(f"config file {path} does not exist", Exit.USAGE)
        return {}
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise Failure(f"config file {path}: {exc}", Exit.USAGE) from None
    if not isinstance(data, dict):
        raise Failure(f"config file {path}: the top level must be a mapping", Exit.USAGE)
    unknown = sorted(set(data) - CONFIG_KEYS)
    if unknown:
        raise Failure(f"config file {path}: unknown keys {unknown}; known: {sorted(CONFIG_KEYS)}", Exit.USAGE)
    servers = data.get("servers") or {}
    if not isinstance(servers, dict) or set(servers) - {*SERVICES, "audit"}:
        raise Failure(f"config file {path}: servers must map {', '.join(SERVICES)} (and audit) to host:port",
                      Exit.USAGE)
    return data


def _read_token(path: str) -> str:
    try:
        token = Path(path).expanduser().read_text().strip()
    except OSError as exc:
        raise Failure(f"token file {path}: {exc.strerror}", Exit.USAGE) from None
    if not token:
        raise Failure(f"token file {path} is empty", Exit.USAGE)
    return token


def resolve(*, environ: Mapping[str, str] | None = None, config_file: str = "", token_file: str = "",
            addresses: Mapping[str, str] | None = None, namespace: str = "", tls: bool | None = None,
            ca_file: str = "", timeout_seconds: float | None = None) -> CtlSettings:
    """Merge defaults, the config file, the environment and the flags given here."""
    env = dict(os.environ if environ is None else environ)
    explicit = config_file or env.get("AIGCCTL_CONFIG", "")
    path = Path(explicit).expanduser() if explicit else default_config_path(env)
    data = _read_config(path, bool(explicit))
    s = CtlSettings(config_file=str(path) if data else "")
    s.addresses.update({k: str(v) for k, v in (data.get("servers") or {}).items()})
    s.namespace = str(data.get("namespace") or s.namespace)
    s.tls = bool(data.get("tls", s.tls))
    s.ca_file = str(data.get("ca_file") or "")
    s.timeout_seconds = float(data.get("timeout_seconds") or s.timeout_seconds)
    for service in (*SERVICES, "audit"):
        if env.get(f"AIGCCTL_{service.upper()}"):
            s.addresses[service] = env[f"AIGCCTL_{service.upper()}"]
    s.namespace = env.get("AIGCCTL_NAMESPACE") or s.namespace
    s.addresses.update({k: v for k, v in (addresses or {}).items() if v})
    s.namespace = namespace or s.namespace
    s.namespace_flag = bool(namespace)
    if tls is not None:
        s.tls = tls
    s.ca_file = ca_file or s.ca_file
    if timeout_seconds is not None:
        s.timeout_seconds = timeout_seconds
    # Credentials: --token-file, then $AIGC_TOKEN_FILE, then $AIGC_TOKEN, then the config file's token_file.
    if token_file:
        s.token, s.token_source = _read_token(token_file), f"--token-file {token_file}"
    elif env.get("AIGC_TOKEN_FILE"):
        s.token, s.token_source = _read_token(env["AIGC_TOKEN_FILE"]), f"$AIGC_TOKEN_FILE ({env['AIGC_TOKEN_FILE']})"
    elif env.get("AIGC_TOKEN"):
        s.token, s.token_source = env["AIGC_TOKEN"].strip(), "$AIGC_TOKEN"
    elif data.get("token_file"):
        # Relative to the config file, so a generated config can sit beside its token.
        token_path = path.parent / Path(str(data["token_file"])).expanduser()
        s.token, s.token_source = _read_token(str(token_path)), f"config token_file ({token_path})"
    return s
