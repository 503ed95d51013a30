"""Configuration: every setting declared once, with its help text.

Sources, later wins: the defaults below, a YAML (or JSON) file, then
environment variables ``AIGC_GATEWAY__<SECTION>__<KEY>`` (``__`` separates
levels; values are parsed as YAML scalars, so ``8080`` is a number and
``[a, b]`` a list). The file is named by ``--config`` or ``AIGC_GATEWAY_CONFIG``.

The original AIGC-Gateway's ``config.json`` (``namespaces``, ``gss_labels``) is a
valid file as it is. Validation happens at start; every bad key is reported
with its path and the process exits non-zero (see :func:`load`).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, SecretStr, ValidationError, field_validator
from pydantic_core import ErrorDetails

ENV_PREFIX = "AIGC_GATEWAY__"
ENV_FILE = "AIGC_GATEWAY_CONFIG"
SERVICE_NAMES = ("template", "instance", "auth", "usersync")


class Section(BaseModel):
    """Base of every section: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", validate_default=True)


class DatabaseConfig(Section):
    url: SecretStr = Field(
        SecretStr(""),
        description="SQLAlchemy URL, e.g. postgresql+asyncpg://user:pass@host/db. "
        "Empty: an embedded SQLite file in data_dir (single machine, development).",
    )
    pool_size: int = Field(10, ge=1, description="Connections kept per process (PostgreSQL).")
    echo: bool = Field(False, description="Log every SQL statement (never in production).")


class OIDCConfig(Section):
    issuer: str = Field(
        "",
        description="OIDC issuer, e.g. https://logto.example.com/oidc. Bearer JWTs must carry it in `iss`. "
        "Empty: bearer tokens are refused.",
    )
    audience: list[str] = Field(
        default_factory=list, description="Accepted `aud` values of bearer JWTs (e.g. the API resource indicator)."
    )
    jwks_uri: str = Field("", description="JWKS URL; empty: taken from the issuer's discovery document.")
    algorithms: list[str] = Field(
        default_factory=lambda: ["RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA"],
        description="Signature algorithms accepted (`none` and HMAC are never accepted).",
    )
    roles_claim: str = Field("roles", description="Claim holding the user's roles (Logto: `roles`).")
    admin_role: str = Field("admin", description="Role that makes a user an admin.")
    jwks_cache_seconds: int = Field(300, ge=10, description="How long fetched keys are trusted before a refresh.")
    leeway_seconds: int = Field(30, ge=0, le=300, description="Clock skew allowed on `exp` and `nbf`.")
    client_id: str = Field("", description="OIDC client id of the gateway (browser sign-in).")
    client_secret: SecretStr = Field(SecretStr(""), description="OIDC client secret (from a Secret, never the file).")
    scopes: list[str] = Field(
        default_factory=lambda: ["openid", "profile", "email", "roles", "custom_data"],
        description="Scopes requested at sign-in.",
    )

    @field_validator("algorithms")
    @classmethod
    def _no_weak_algorithms(cls, value: list[str]) -> list[str]:
        bad = [a for a in value if a.lower() == "none" or a.upper().startswith("HS")]
        if bad:
            raise ValueError(f"algorithms not allowed: {bad}")
        return value


class ServiceIdentityConfig(Section):
    token: SecretStr = Field(
        SecretStr(""),
        description="Shared secret (at least 32 characters) that authenticates the gateway's own services "
        "to each other and background work. Empty: service calls are refused; `serve all` makes a random "
        "one for its own process.",
    )

    @field_validator("token")
    @classmethod
    def _long_enough(cls, value: SecretStr) -> SecretStr:
        if value.get_secret_value() and len(value.get_secret_value()) < 32:
            raise ValueError("must be at least 32 characters")
        return value


class Endpoint(Section):
    listen: str = Field(..., description="host:port the gRPC server binds.")
    target: str = Field(
        "", description="gRPC target other services dial: host:port, `dns:///name:port` (a headless Service: "
        "calls spread over every pod, round_robin) or `ipv4:host:port,host:port`; empty: derived from `listen`.")

    def dial_target(self) -> str:
        if self.target:
            return self.target
        host, _, port = self.listen.rpartition(":")
        return f"{'127.0.0.1' if host in ('', '0.0.0.0', '[::]') else host}:{port}"


class ServersConfig(Section):
    template: Endpoint = Field(default_factory=lambda: Endpoint(listen="127.0.0.1:50061"))
    instance: Endpoint = Field(default_factory=lambda: Endpoint(listen="127.0.0.1:50062"))
    auth: Endpoint = Field(default_factory=lambda: Endpoint(listen="127.0.0.1:50063"))
    usersync: Endpoint = Field(default_factory=lambda: Endpoint(listen="127.0.0.1:50064"))
    metrics_listen: str = Field(
        "127.0.0.1:9464", description="host:port of the Prometheus /metrics endpoint of this process ('' = off)."
    )
    shutdown_grace_seconds: float = Field(10.0, ge=0, description="How long SIGTERM waits for in-flight RPCs.")
    reflection: bool = Field(True, description="Serve gRPC server reflection.")

    def endpoint(self, service: str) -> Endpoint:
        endpoint: Endpoint = getattr(self, service)
        return endpoint


class KubernetesConfig(Section):
    kubeconfig: str = Field("", description="Path of a kubeconfig; empty: in-cluster config, else ~/.kube/config.")
    context: str = Field("", description="kubeconfig context to use; empty: the current one.")


class LoggingConfig(Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    json_format: bool = Field(True, alias="json", description="JSON lines (true) or plain text (false).")


class AuditConfig(Section):
    denied_per_minute: int = Field(
        60, ge=1, description="Denied attempts audited one by one per minute and process; beyond that they are "
        "counted and written as one aggregate event, so a flood cannot fill the log."
    )


class IdempotencyConfig(Section):
    replica_lease_seconds: float = Field(
        10.0, ge=1, le=300, description="How long a replica counts as alive after its last heartbeat (it renews "
        "every third of this). A retry of a request whose replica died takes the request over at most this long "
        "after the death; a live replica's request is never taken over.")
    in_progress_retry_after_seconds: float = Field(
        1.0, gt=0, le=60, description="The `retry_after` of ABORTED REQUEST_IN_PROGRESS, answered to a retry "
        "while the first call still runs in a live replica.")
    retention_hours: float = Field(
        24.0, ge=1, description="How long the first outcome of a request id is kept for replays.")


class TemplateConfig(Section):
    max_manifest_bytes: int = Field(256 * 1024, ge=1024, description="Largest manifest accepted.")
    annotation_prefix: str = Field("aigc.gateway.io/", description="Prefix of the display-metadata annotations.")
    auth_url: str = Field(
        "", description="The ingress `auth-url` every template must carry. Empty: `<auth.public_url>/auth` when "
        "auth.public_url is set, else https://dashboard.<domain>/auth. `rh=$host` (the host the proxy routed on, "
        "which /auth requires) is added to its query when missing.")
    auth_signin_url: str = Field(
        "", description="The ingress `auth-signin` every template must carry. Empty: `<auth.public_url>/sign-in` "
        "when auth.public_url is set, else https://dashboard.<domain>/sign-in.")
    delete_wait_seconds: float = Field(
        180.0, ge=1, description="How long DeleteTemplate with force waits for the pods and disks of the template "
        "to go before it answers UNAVAILABLE (a retry of the delete resumes the cascade).")
    rollout_policy: Literal["WHEN_IDLE", "IMMEDIATE", "MANUAL"] = Field(
        "WHEN_IDLE", description="How a change under `gameServerTemplate` reaches live instances when neither the "
        "request nor the template's `rollout-policy` annotation says (docs/upgrade.md): WHEN_IDLE moves idle and "
        "consenting instances at once and busy ones once idle, MANUAL only new, resumed and explicitly updated ones, "
        "IMMEDIATE every live instance at once (it needs allow_restart). UpdateTemplate records the choice on the "
        "template and the instance service's reconciler carries it out.")
    rollout_idle_after_seconds: float = Field(
        900.0, ge=0, description="WHEN_IDLE: how long without an authorised access an instance counts as idle (plus "
        "65 s for how late the access is recorded), when neither the request nor the template's "
        "`rollout-idle-after` annotation says.")


class QuotaLimits(Section):
    """Per-user limits (services/instance/quotas.py); unset (null) means unlimited."""

    installed: int | None = Field(None, ge=0, description="Instances a user may hold (running or paused).")
    running: int | None = Field(None, ge=0, description="Instances a user may have running.")
    gpus: int | None = Field(None, ge=0, description="`nvidia.com/gpu` units a user's running instances may "
                             "request.")
    gpu_memory_gib: int | None = Field(None, ge=0, description="`aliyun.com/gpu-mem` GiB a user's running "
                                       "instances may request.")


class QuotaConfig(Section):
    default: QuotaLimits = Field(default_factory=QuotaLimits)
    roles: dict[str, QuotaLimits] = Field(
        default_factory=dict, description="Overrides per role claim (e.g. `admin`), field by field over the "
        "default; with several roles the most generous value wins. A user's roles are the claims of their own call, "
        "else those of their last install, resume or usage read (docs/quotas.md).")
    users: dict[str, QuotaLimits] = Field(
        default_factory=dict, description="Overrides per user (subject), field by field over roles and default.")
    template_running: dict[str, NonNegativeInt] = Field(
        default_factory=dict, description="Instances that may run at once per template, keyed `namespace/template` "
        "(`*` for every template not named).")


class IdleConfig(Section):
    enabled: bool = Field(True, description="Run the idle culler on this replica (every replica runs it; no leader).")
    default_after_seconds: float = Field(
        7200.0, ge=0, description="Idle time after which an instance of a CPU template is paused, unless its "
        "template's `idle-after` annotation says otherwise; 0 = never.")
    gpu_default_after_seconds: float = Field(
        1800.0, ge=0, description="The same for templates that request nvidia.com/gpu or aliyun.com/gpu-mem; 0 = never.")
    warning_seconds: float = Field(
        600.0, ge=0, description="How long before the pause the owner is warned (a WatchInstance event and "
        "Instance.scheduled_pause_time); the pause never comes sooner than this after the warning.")
    interval_seconds: float = Field(60.0, gt=0, description="How often the culler looks at the running instances.")
    probe_timeout_seconds: float = Field(5.0, gt=0, description="Timeout of one busy probe (HTTP GET on the pod).")


class InstanceConfig(Section):
    reconcile_interval_seconds: float = Field(30.0, ge=1, description="How often the reconciler runs.")
    settle_timeout_seconds: float = Field(
        30.0, ge=0, description="How long an operation waits for the OpenKruiseGame controller to finish the "
        "template's previous GameServerSet write before making its own (UNAVAILABLE after that).")
    conflict_retries: int = Field(
        20, ge=0, le=100, description="GameServerSet writes retried (jittered backoff) after a 409 conflict.")
    release_wait_seconds: float = Field(
        0.0, ge=0, description="How long DeleteInstance waits for the instance's disks to be deleted before "
        "answering (0: it answers UNINSTALLING once the owner is removed); the deletion goes on after the answer, "
        "and the reconciler finishes what is left.")
    cache_sync_timeout_seconds: float = Field(
        10.0, ge=0, description="How long a read waits for the Kubernetes watch caches to fill after start.")
    quotas: QuotaConfig = Field(default_factory=QuotaConfig)
    idle: IdleConfig = Field(default_factory=IdleConfig)


class AuthConfig(Section):
    http_listen: str = Field("127.0.0.1:8081", description="host:port of /auth, /sign-in, /sign-in-callback, /sign-out.")
    public_url: str = Field("", description="External base URL of the auth endpoints, e.g. https://dashboard.example.com.")
    cookie_name: str = Field("aigc_session", description="Session cookie name.")
    cookie_secure: bool = Field(True, description="Set Secure on the cookie (turn off only for local http).")
    session_keys: list[SecretStr] = Field(
        default_factory=list, description="Cookie signing keys: the first signs, all verify (rotation)."
    )
    session_ttl_seconds: int = Field(8 * 3600, ge=60, description="Session lifetime.")
    allow_admin_access: bool = Field(False, description="Let admins open every instance.")
    allow_http_redirects: bool = Field(False, description="Accept http:// `rd` targets (local development).")
    owners_stale_after_seconds: float = Field(
        10.0, ge=1, le=300, description="How long the owner map stays trusted without a full read of the ownership "
        "table or a LISTEN connection that answers its pings; after that every check is refused (OWNERS_UNKNOWN) "
        "until a read succeeds. Shorter closes faster when the database is lost; too short refuses owners when a "
        "loaded host runs the pings late.")
    proxy: Literal["nginx", "traefik"] = Field(
        "nginx",
        description="The proxy in front of `/auth`, which decides the headers that carry the request (never the "
        "headers that happen to arrive). `nginx` (ingress-nginx, its maintained forks, the nginx stand-in): "
        "`X-Original-URL`. `traefik` (Traefik v3's kubernetesIngressNGINX provider, Traefik forwardAuth): "
        "`X-Forwarded-Proto/-Host/-Uri`, and a client's `X-Original-URL` is ignored. Either way the auth-url's "
        "`rh` query parameter (`?rh=$host`, the host the proxy routed on) must name the same host, or the check "
        "is refused (403 ROUTED_HOST_MISMATCH). See docs/auth.md.",
    )
    http_workers: int | None = Field(
        None, ge=0, le=256,
        description="Processes serving the HTTP endpoints, all on auth.http_listen (SO_REUSEPORT), each with a copy "
        "of the owner map fed by this process. Unset: one per CPU this process may use (its CPU set, and the "
        "container's CPU limit rounded up). 0: serve them inside the gRPC process.",
    )
    http_event_loop: Literal["uvloop", "asyncio"] = Field(
        "uvloop", description="Event loop of the HTTP worker processes (uvloop is faster; asyncio is the standard one)."
    )


class UserSyncConfig(Section):
    http_listen: str = Field("127.0.0.1:8082", description="host:port of POST /webhooks/logto.")
    logto_endpoint: str = Field("", description="Logto base URL, e.g. https://logto.example.com. Empty: mirror off.")
    logto_app_id: str = Field("", description="Logto M2M application id.")
    logto_app_secret: SecretStr = Field(SecretStr(""), description="Logto M2M application secret.")
    logto_resource: str = Field("https://default.logto.app/api", description="Management API resource indicator.")
    webhook_signing_key: SecretStr = Field(SecretStr(""), description="Logto webhook signing key.")
    user_deleted_policy: Literal["pause", "purge"] = Field("pause", description="What User.Deleted does.")
    webhook_max_age_seconds: int = Field(
        300, ge=10, le=86400, description="Webhook deliveries whose createdAt is older than this are refused as stale."
    )
    logto_timeout_seconds: float = Field(10.0, gt=0, description="Timeout of one Logto request.")
    logto_max_attempts: int = Field(5, ge=1, le=20, description="Tries per Logto request (429/5xx/connection errors).")
    logto_retry_budget_seconds: float = Field(
        30.0, gt=0, description="Longest one Logto request keeps retrying before it is reported unavailable."
    )
    delivery_batch_size: int = Field(100, ge=1, le=1000, description="Outbox rows of one user written to Logto at once.")
    delivery_concurrency: int = Field(4, ge=1, le=64, description="Users delivered in parallel by one replica.")
    delivery_poll_seconds: float = Field(
        2.0, gt=0, description="How often the outbox is polled (a change notification wakes it sooner)."
    )
    delivery_max_backoff_seconds: float = Field(
        60.0, gt=0, description="Longest pause between delivery passes while Logto is unavailable."
    )
    reconcile_interval_seconds: float = Field(
        600.0, ge=0, description="How often one replica compares PostgreSQL with Logto and repairs Logto (0 = off)."
    )
    outbox_retention_hours: float = Field(
        168.0, ge=1, description="Delivered outbox rows and webhook replay ids older than this are deleted."
    )


class Settings(Section):
    # The original AIGC-Gateway's config.json keys, with their meaning kept.
    namespaces: list[str] = Field(
        default_factory=list, description="Namespaces holding templates; empty means all namespaces."
    )
    gss_labels: dict[str, str] = Field(
        default_factory=dict, description="Labels a GameServerSet must carry to be a template."
    )
    domain: str = Field("example.com", description="Root domain shared by the dashboard and every instance host.")
    data_dir: str = Field("./var", description="Where the embedded SQLite file and other local state live.")
    database: DatabaseConfig = Field(default_factory=DatabaseConfig)
    oidc: OIDCConfig = Field(default_factory=OIDCConfig)
    service_identity: ServiceIdentityConfig = Field(default_factory=ServiceIdentityConfig)
    servers: ServersConfig = Field(default_factory=ServersConfig)
    kubernetes: KubernetesConfig = Field(default_factory=KubernetesConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    audit: AuditConfig = Field(default_factory=AuditConfig)
    idempotency: IdempotencyConfig = Field(default_factory=IdempotencyConfig)
    template: TemplateConfig = Field(default_factory=TemplateConfig)
    instance: InstanceConfig = Field(default_factory=InstanceConfig)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    usersync: UserSyncConfig = Field(default_factory=UserSyncConfig)

    def database_url(self) -> str:
        url = self.database.url.get_secret_value()
        if url:
            return url
        return f"sqlite+aiosqlite:///{Path(self.data_dir).resolve() / 'aigc-gateway.sqlite3'}"


class ConfigError(Exception):
    """The configuration is unusable; ``problems`` holds one line per bad key."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _from_env(environ: dict[str, str]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        path = [p.lower() for p in name[len(ENV_PREFIX):].split("__") if p]
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {})
        try:
            node[path[-1]] = yaml.safe_load(raw) if raw else raw
        except yaml.YAMLError:
            node[path[-1]] = raw
    return tree


def _describe(error: ErrorDetails) -> str:
    where = ".".join(str(p) for p in error["loc"]) or "(top level)"
    kind = error["type"]
    if kind == "extra_forbidden":
        return f"{where}: unknown key"
    if kind == "missing":
        return f"{where}: missing required key"
    value = error.get("input")
    shown = "" if isinstance(value, (dict, list)) or "secret" in where or "token" in where or "key" in where else f" (got {value!r})"
    return f"{where}: {error['msg'].lower()}{shown}"


def load(path: str | os.PathLike[str] | None = None, environ: dict[str, str] | None = None) -> Settings:
    """Read, merge and validate the configuration; raise :class:`ConfigError` listing every bad key."""
    environ = dict(os.environ if environ is None else environ)
    path = path or environ.get(ENV_FILE) or None
    data: dict[str, Any] = {}
    if path:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from exc
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError([f"{path}: not valid YAML or JSON: {exc}"]) from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError([f"{path}: the top level must be a mapping"])
        data = loaded or {}
    data = _merge(data, _from_env(environ))
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError([_describe(e) for e in exc.errors()]) from None


def reference_markdown() -> str:
    """docs/configuration.md, generated from the declarations above (a test keeps them in step)."""
    lines = ["# Configuration reference", "",
             "Generated by `aigc-gateway config reference` from `src/aigc_gateway/config.py`; do not edit.", "",
             f"File: `--config FILE` or `${ENV_FILE}` (YAML or JSON). Environment overrides: "
             f"`{ENV_PREFIX}<SECTION>__<KEY>=value` (values parsed as YAML).", ""]

    def walk(model: type[BaseModel], prefix: str) -> None:
        rows = []
        for name, field in model.model_fields.items():
            key = field.alias or name
            annotation = field.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                walk(annotation, f"{prefix}{key}.")
                continue
            default = "required" if field.is_required() else repr(
                field.get_default(call_default_factory=True)).replace("SecretStr('')", "''")
            if isinstance(field.get_default(call_default_factory=True), SecretStr) or "Secret" in str(annotation):
                default = "'' (secret)" if not field.is_required() else "required (secret)"
            rows.append(f"| `{prefix}{key}` | `{default}` | {field.description or ''} |")
        if rows:
            lines.extend([f"## `{prefix.rstrip('.') or '(top level)'}`", "", "| key | default | meaning |",
                          "|---|---|---|", *rows, ""])

    walk(Settings, "")
    return "\n".join(lines)
