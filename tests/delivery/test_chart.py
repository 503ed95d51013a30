"""The Helm chart renders with its defaults and with a values file for each sample, carries
no secret, and grants each service exactly the Kubernetes verbs its code uses."""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from aigc_gateway.config import load as load_settings

from .chart import CHART, SAMPLE_VALUES, SERVICES, kube_calls, render, rules_of
from .conftest import REPO, load_script

# Calls whose Kind is a variable, with the kinds the code passes (kube_calls resolves them from the
# callers; the test checks that this documented list is exactly what it finds):
# auth's owner-map informers run list+watch over (GSS, GAMESERVER); the instance service's
# direct read of one instance gets its GameServer, pod and disks (cluster.py `get(kind, ...)`);
# the template service's `exists(namespace, name, kind)` reads a GameServerSet or the Advanced
# StatefulSet under it (to tell when a forced delete has finished).
DYNAMIC = {
    "auth": {("game.kruise.io", "gameserversets", "list"), ("game.kruise.io", "gameserversets", "watch"),
             ("game.kruise.io", "gameservers", "list"), ("game.kruise.io", "gameservers", "watch")},
    "instance": {("game.kruise.io", "gameservers", "get"), ("", "pods", "get"), ("", "persistentvolumeclaims", "get")},
    "template": {("game.kruise.io", "gameserversets", "get"), ("apps.kruise.io", "statefulsets", "get")},
    "usersync": set(),
}


def _by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


@pytest.fixture(scope="module")
def defaults(helm: Path) -> list[dict[str, Any]]:
    return render(helm, "aigc")


def test_defaults_render_every_part(defaults: list[dict[str, Any]]) -> None:
    kinds = sorted({o["kind"] for o in defaults})
    assert kinds == ["ClusterRole", "ClusterRoleBinding", "ConfigMap", "Deployment", "Ingress", "Job",
                     "NetworkPolicy", "PodDisruptionBudget", "Service", "ServiceAccount"]
    deployments = {o["metadata"]["labels"]["app.kubernetes.io/component"]: o for o in _by_kind(defaults, "Deployment")}
    assert set(deployments) == {*SERVICES, "bridge"}
    for component, deployment in deployments.items():
        pod = deployment["spec"]["template"]["spec"]
        [container] = pod["containers"]
        assert pod["serviceAccountName"].endswith(f"-{component}")
        assert container["readinessProbe"] and container["livenessProbe"] and container["resources"]["requests"]
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert "podAntiAffinity" in pod["affinity"]
        if component != "bridge":
            assert container["readinessProbe"]["grpc"]["port"] == 50051  # gRPC health checking
            assert container["args"] == ["serve", component]
    assert {p["metadata"]["labels"]["app.kubernetes.io/component"] for p in _by_kind(defaults, "PodDisruptionBudget")} \
        == {*SERVICES, "bridge"}
    [job] = _by_kind(defaults, "Job")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert job["spec"]["template"]["spec"]["containers"][0]["args"] == ["migrate", "--revision", "heads"]
    [ingress] = _by_kind(defaults, "Ingress")
    assert ingress["spec"]["tls"][0]["hosts"] == ["dashboard.example.com"]
    paths = {p["path"]: p["backend"]["service"]["name"] for p in ingress["spec"]["rules"][0]["http"]["paths"]}
    assert paths["/v1"].endswith("-bridge") and paths["/auth"].endswith("-auth")
    assert paths["/webhooks/logto"].endswith("-usersync")
    # The dashboard: / to the bridge, which serves the built assets on the same origin as /v1.
    assert paths["/"].endswith("-bridge")
    bridge = next(d for d in _by_kind(defaults, "Deployment") if d["metadata"]["name"].endswith("-bridge"))
    env = {e["name"]: e.get("value") for e in bridge["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["AIGC_BRIDGE_STATIC_DIR"] == "/dashboard"


def test_grpc_clients_spread_calls_over_every_pod(defaults: list[dict[str, Any]]) -> None:
    """One HTTP/2 connection to a ClusterIP Service carries every call of a client to one pod: each gRPC
    component has a headless Service (one A record per ready pod) and every gRPC client in the chart, the
    services' configuration and the bridge, dials its dns:/// name and balances round_robin over it."""
    services = {o["metadata"]["name"]: o for o in _by_kind(defaults, "Service")}
    [configmap] = _by_kind(defaults, "ConfigMap")
    config = yaml.safe_load(configmap["data"]["config.yaml"])
    bridge = next(d for d in _by_kind(defaults, "Deployment") if d["metadata"]["name"].endswith("-bridge"))
    env = {e["name"]: e.get("value") for e in bridge["spec"]["template"]["spec"]["containers"][0]["env"]}
    deployments = {d["metadata"]["labels"]["app.kubernetes.io/component"]: d for d in _by_kind(defaults, "Deployment")}
    for service in SERVICES:
        headless = services[f"gw-aigc-gateway-{service}-grpc"]
        assert headless["spec"]["clusterIP"] == "None"
        assert headless["spec"]["ports"] == [{"name": "grpc", "port": 50051, "targetPort": "grpc",
                                              "appProtocol": "grpc"}]
        assert headless["spec"]["selector"] == deployments[service]["spec"]["selector"]["matchLabels"]
        # The ClusterIP Service stays for the Ingress, metrics and HTTP.
        assert services[f"gw-aigc-gateway-{service}"]["spec"].get("clusterIP") != "None"
        target = f"dns:///gw-aigc-gateway-{service}-grpc.aigc.svc:50051"
        assert config["servers"][service]["target"] == target
        assert env[f"AIGC_BRIDGE_{service.upper()}"] == target
    assert not [n for n in services if n.endswith("-bridge-grpc")]
    # Both kinds of client open their channels with round_robin.
    from aigc_gateway.channels import CLIENT_CHANNEL_OPTIONS

    assert ("grpc.lb_policy_name", "round_robin") in CLIENT_CHANNEL_OPTIONS
    assert '"round_robin"' in (REPO / "bridge" / "retry.go").read_text()


def test_no_secret_values_anywhere(defaults: list[dict[str, Any]]) -> None:
    assert not _by_kind(defaults, "Secret")
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert set(values["secrets"]) == {"existingSecret", "keys"}  # names of entries, never their values
    for deployment in [*_by_kind(defaults, "Deployment"), *_by_kind(defaults, "Job")]:
        for env in deployment["spec"]["template"]["spec"]["containers"][0].get("env", []):
            secretish = any(w in env["name"] for w in ("URL", "TOKEN", "SECRET", "KEYS", "KEY"))
            if secretish and env["name"] != "AIGC_GATEWAY_CONFIG":
                assert "valueFrom" in env and "value" not in env, env


def test_each_service_gets_only_its_secrets(defaults: list[dict[str, Any]]) -> None:
    def env_names(component: str) -> set[str]:
        [d] = [d for d in _by_kind(defaults, "Deployment")
               if d["metadata"]["labels"]["app.kubernetes.io/component"] == component]
        return {e["name"] for e in d["spec"]["template"]["spec"]["containers"][0]["env"]}

    assert "AIGC_GATEWAY__USERSYNC__LOGTO_APP_SECRET" in env_names("usersync")
    assert "AIGC_GATEWAY__OIDC__CLIENT_SECRET" in env_names("auth")
    for other in ("template", "instance", "auth"):
        assert "AIGC_GATEWAY__USERSYNC__LOGTO_APP_SECRET" not in env_names(other)
    assert not any("GATEWAY__" in n for n in env_names("bridge"))  # the bridge holds no secret
    for component in ("bridge",):
        [d] = [d for d in _by_kind(defaults, "Deployment")
               if d["metadata"]["labels"]["app.kubernetes.io/component"] == component]
        assert d["spec"]["template"]["spec"]["automountServiceAccountToken"] is False


SECRET_SAMPLES = {  # a value of the right shape for each secret the chart passes as an environment variable
    "database-url": "postgresql+asyncpg://gw:pw@db.example:5432/gw",
    "service-token": "s" * 40,
    "session-keys": "[" + "k" * 40 + ", " + "j" * 40 + "]",
    "oidc-client-secret": "oidc-secret-value",
    "logto-app-secret": "logto-secret-value",
    "logto-webhook-signing-key": "w" * 40,
}


def _secret_value(value: Any) -> Any:
    value = value.get_secret_value() if hasattr(value, "get_secret_value") else value
    return [_secret_value(v) for v in value] if isinstance(value, list) else value


def test_every_secret_environment_variable_reaches_its_setting(defaults: list[dict[str, Any]]) -> None:
    """The chart's secret environment names (AIGC_GATEWAY__<SECTION>__<KEY>) are fed through the real
    config.load, with the rendered config file: each must land in the setting it names, or a secret the
    chart mounts would be silently ignored (a typo in a name is not an error in Kubernetes)."""
    [configmap] = _by_kind(defaults, "ConfigMap")
    seen: set[str] = set()
    for workload in [*_by_kind(defaults, "Deployment"), *_by_kind(defaults, "Job")]:
        env = workload["spec"]["template"]["spec"]["containers"][0].get("env", [])
        secret_env = {e["name"]: e["valueFrom"]["secretKeyRef"]["key"] for e in env
                      if "secretKeyRef" in e.get("valueFrom", {})}
        if not secret_env:
            continue
        with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
            f.write(configmap["data"]["config.yaml"])
            f.flush()
            settings = load_settings(f.name, environ={n: SECRET_SAMPLES[k] for n, k in secret_env.items()})
        for name, key in secret_env.items():
            section, setting = name.removeprefix("AIGC_GATEWAY__").lower().split("__")
            got = _secret_value(getattr(getattr(settings, section), setting))
            expected = yaml.safe_load(SECRET_SAMPLES[key])
            assert got == expected, (workload["metadata"]["name"], name, got)
            seen.add(name)
    assert seen == {"AIGC_GATEWAY__DATABASE__URL", "AIGC_GATEWAY__SERVICE_IDENTITY__TOKEN",
                    "AIGC_GATEWAY__AUTH__SESSION_KEYS", "AIGC_GATEWAY__OIDC__CLIENT_SECRET",
                    "AIGC_GATEWAY__USERSYNC__LOGTO_APP_SECRET", "AIGC_GATEWAY__USERSYNC__WEBHOOK_SIGNING_KEY"}


@pytest.mark.parametrize("values_file", [None, *SAMPLE_VALUES], ids=lambda p: p.stem if p else "defaults")
def test_rendered_configuration_is_valid(helm: Path, values_file: Path | None) -> None:
    objects = render(helm, "aigc", *([values_file] if values_file else []))
    [configmap] = _by_kind(objects, "ConfigMap")
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        f.write(configmap["data"]["config.yaml"])
        f.flush()
        settings = load_settings(f.name, environ={})
    for service in SERVICES:  # the headless Service, balanced round_robin (test_grpc_clients_spread_...)
        assert settings.servers.endpoint(service).dial_target() == f"dns:///gw-aigc-gateway-{service}-grpc.aigc.svc:50051"
    assert settings.auth.public_url.startswith("https://dashboard.")
    assert settings.auth.proxy == "nginx"  # the default: ingress-nginx reads the samples' annotations
    if values_file:
        values = yaml.safe_load(values_file.read_text())
        assert settings.namespaces == values["namespaces"] and settings.domain == values["domain"]
        [gss] = _by_kind(objects, "GameServerSet")
        assert gss["metadata"]["annotations"]["helm.sh/hook"] == "post-install"
        assert gss["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
        assert gss["metadata"]["labels"].items() >= values["gssLabels"].items()  # seen by the gateway
        # Namespaced RBAC: a Role per service in each template namespace, none cluster-wide.
        assert not _by_kind(objects, "ClusterRole")
        assert {r["metadata"]["namespace"] for r in _by_kind(objects, "Role")} == set(values["namespaces"])


def test_sample_values_files_are_up_to_date() -> None:
    files = load_script(CHART / "ci" / "generate.py").expected()
    assert len(files) == 5 and files.keys() == set(SAMPLE_VALUES)
    stale = [p.name for p, text in files.items() if p.read_text() != text]
    assert not stale, f"run python deploy/helm/aigc-gateway/ci/generate.py: {stale}"


@pytest.mark.parametrize("service", SERVICES)
def test_rbac_is_exactly_what_the_code_calls(defaults: list[dict[str, Any]], service: str) -> None:
    static, dynamic = kube_calls(service)
    unresolved = [where for where, found in dynamic.items() if not found]
    assert not unresolved, f"calls whose kind the code does not show: {unresolved}"
    resolved = set().union(*dynamic.values())
    assert resolved == DYNAMIC[service], f"{service}: DYNAMIC differs from what the code passes: {resolved}"
    needed = static | resolved
    granted = rules_of(defaults, service)
    assert needed - granted == set(), f"{service} calls what its Role does not allow"
    assert granted - needed == set(), f"{service}'s Role grants what its code never calls"


def test_values_schema_rejects_typos_and_bad_values(helm: Path) -> None:
    import subprocess

    from .chart import CHART

    for setting, message in (("servics.template.replicas=3", "servics"), ("podAntiAffinity=sometimes", "soft"),
                             ("bridge.rateLimit=-1", "rateLimit")):
        result = subprocess.run([str(helm), "template", "gw", str(CHART), "--set", setting], capture_output=True,
                                text=True, timeout=60)
        assert result.returncode != 0 and message in result.stderr, (setting, result.stderr)


def test_optional_service_monitor_scrapes_the_four_services(helm: Path) -> None:
    objects = render(helm, "aigc", **{"serviceMonitor.enabled": "true"})
    [monitor] = _by_kind(objects, "ServiceMonitor")
    [expression] = monitor["spec"]["selector"]["matchExpressions"]
    assert sorted(expression["values"]) == sorted(SERVICES)
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    assert not _by_kind(render(helm, "aigc"), "ServiceMonitor")  # off by default


def test_the_proxy_in_front_of_auth_is_a_chart_value(helm: Path) -> None:
    [configmap] = _by_kind(render(helm, "aigc", **{"auth.proxy": '"traefik"'}), "ConfigMap")
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        f.write(configmap["data"]["config.yaml"])
        f.flush()
        assert load_settings(f.name, environ={}).auth.proxy == "traefik"
