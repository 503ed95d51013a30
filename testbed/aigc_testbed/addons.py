"""What runs on top of the control plane: fake nodes, kruise, kruise-game, the readiness probe."""

from __future__ import annotations

import base64
import shutil
import socket
import ssl
import time
from collections.abc import Callable
from pathlib import Path

from . import processes
from .config import MANIFESTS, Config
from .kubectl import Kubectl, http_ok
from .pki import make_serving_cert
from .util import TestbedError, fail, log_tail, say, wait_for

# Per fake node. Generous, so that tests are never limited by capacity; the GPU resources let
# the GPU (nvidia.com/gpu) and shared-GPU (aliyun.com/gpu-mem, GiB) templates schedule.
NODE_ALLOCATABLE = {"cpu": "64", "memory": "256Gi", "pods": "110", "ephemeral-storage": "1Ti",
                    "nvidia.com/gpu": "8", "aliyun.com/gpu-mem": "96"}


def nodes(count: int) -> list[dict]:
    """Node objects for kwok to run pods on. No taint: templates need no toleration."""
    result = []
    for i in range(count):
        name = f"kwok-node-{i}"
        result.append({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {
                "name": name,
                "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
                "labels": {"type": "kwok", "kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                           "kubernetes.io/arch": "amd64", "node-role.kubernetes.io/agent": ""},
            },
            # Pod IPs this machine can bind, so the pods' backends (edge.py) can listen on them.
            "spec": {"podCIDR": f"198.18.{16 * i}.0/20", "podCIDRs": [f"198.18.{16 * i}.0/20"]},
            "status": {"allocatable": NODE_ALLOCATABLE, "capacity": NODE_ALLOCATABLE},
        })
    return result


def tls_answers(port: int, cafile: Path | None = None) -> bool:
    """Something serves TLS on 127.0.0.1:port (verified against `cafile` when given)."""
    ctx = ssl.create_default_context(cafile=str(cafile)) if cafile else ssl._create_unverified_context()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            with ctx.wrap_socket(sock, server_hostname="127.0.0.1"):
                return True
    except OSError:
        return False


# --- kruise ------------------------------------------------------------------------------------
def start_kruise(cfg: Config, kubectl: Kubectl) -> None:
    """kruise-manager in URL mode: with WEBHOOK_HOST set it makes its own certificates for that
    host and rewrites its two webhook configurations (and CRD conversion) to `url:` entries,
    so the configurations must exist before it starts."""
    work = cfg.state / "kruise"
    kustomize = work / "webhook-kustomize"
    shutil.copytree(cfg.kruise_config / "webhook", kustomize / "webhook", dirs_exist_ok=True)
    # config/default of kruise adds the `kruise-` prefix and the namespace; do the same.
    (kustomize / "kustomization.yaml").write_text(
        "namePrefix: kruise-\nnamespace: kruise-system\nresources:\n- webhook\n")
    rendered = kubectl.run("kustomize", str(kustomize)).stdout
    kubectl.apply(rendered)

    log = cfg.logs / "kruise-manager.log"
    say("up: starting kruise-manager")
    processes.start(cfg, "kruise-manager", [
        str(cfg.bin("kruise", "kruise-manager")),
        "--enable-leader-election=false",
        # No kruise-daemon on fake nodes (side effect: PodProbeMarker creation is refused).
        "--feature-gates=KruiseDaemon=false",
        f"--metrics-addr=127.0.0.1:{cfg.ports['kruise_metrics']}",
        f"--health-probe-addr=127.0.0.1:{cfg.ports['kruise_health']}",
        "--enable-pprof=false",
        f"--protection-log-path={work / 'protection'}",
    ], {
        "KUBECONFIG": str(cfg.kubeconfig),
        "POD_NAMESPACE": "kruise-system",
        "WEBHOOK_HOST": "127.0.0.1",
        "WEBHOOK_PORT": str(cfg.ports["kruise_webhook"]),
        "WEBHOOK_CERT_DIR": str(work / "certs"),
    })
    health = f"http://127.0.0.1:{cfg.ports['kruise_health']}/readyz"
    wait_for("kruise-manager /readyz", lambda: _alive_and(cfg, "kruise-manager", http_ok(health)), 120, log)

    def rewritten() -> bool:
        conf = kubectl.get_json("mutatingwebhookconfiguration", "kruise-mutating-webhook-configuration")
        hooks = (conf or {}).get("webhooks") or []
        return bool(hooks) and all(h["clientConfig"].get("url") and h["clientConfig"].get("caBundle")
                                   for h in hooks)
    wait_for("kruise webhook configuration in URL mode", rewritten, 60, log)
    wait_for("kruise webhook TLS", lambda: tls_answers(cfg.ports["kruise_webhook"]), 30, log)
    say("up: kruise-manager ready")


def _alive_and(cfg: Config, name: str, result: bool) -> bool:
    """Fail fast (instead of waiting out the timeout) when the process died."""
    proc = next(p for p in processes.own_procs(cfg) if p.name == name)
    if not proc.alive():
        status = processes.exit_status(name)
        fail(f"{name} exited" + (f" ({status})" if status else ""), proc.log)
    return result


def start_with_retry(start: Callable[[Config, Kubectl], None], cfg: Config, kubectl: Kubectl, name: str) -> None:
    """Start a manager; if it exits while starting (an exit status this process saw), start it once more.
    A manager merely reported gone is not restarted: a second one beside a live first would fight it for
    its ports (seen when an empty command line right after the start was taken for an exit)."""
    try:
        start(cfg, kubectl)
    except TestbedError as exc:
        if not processes.exit_status(name):
            raise  # not an exit of the manager we started (or not one we can see): do not start a second
        say(f"up: {exc}; starting it once more")
        say(log_tail(exc.log) if exc.log else "")
        processes.stop(next(p for p in processes.own_procs(cfg) if p.name == name))
        start(cfg, kubectl)


# --- kruise-game -------------------------------------------------------------------------------
def _kruise_game_webhooks(cfg: Config, ca: bytes) -> list[dict]:
    """The two configurations kruise-game would create for its Service, in URL form."""
    base = f"https://127.0.0.1:{cfg.ports['kruise_game_webhook']}"
    common = {"sideEffects": "None", "failurePolicy": "Fail", "matchPolicy": "Equivalent",
              "admissionReviewVersions": ["v1", "v1beta1"], "timeoutSeconds": 10}
    ca_b64 = base64.b64encode(ca).decode()
    return [
        {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
         "metadata": {"name": "kruise-game-mutating-webhook"},
         "webhooks": [common | {
             "name": "mgameserverset.kb.io",
             "clientConfig": {"url": f"{base}/mutate-v1-pod", "caBundle": ca_b64},
             "rules": [{"operations": ["CREATE", "UPDATE", "DELETE"], "apiGroups": [""],
                        "apiVersions": ["v1"], "resources": ["pods"]}],
             # Only pods of a GameServerSet; the network plugins run in this webhook.
             "objectSelector": {"matchExpressions": [
                 {"key": "game.kruise.io/owner-gss", "operator": "Exists"}]},
         }]},
        {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
         "metadata": {"name": "kruise-game-validating-webhook"},
         "webhooks": [common | {
             "name": "vgameserverset.kb.io",
             "clientConfig": {"url": f"{base}/validate-v1alpha1-gss", "caBundle": ca_b64},
             "rules": [{"operations": ["CREATE", "UPDATE"], "apiGroups": ["game.kruise.io"],
                        "apiVersions": ["v1alpha1"], "resources": ["gameserversets"]}],
         }]},
    ]


def start_kruise_game(cfg: Config, kubectl: Kubectl) -> None:
    """kruise-game-manager with certificates we make and URL-mode webhooks we register
    (it has no URL mode of its own: --enable-cert-generation=false)."""
    work = cfg.state / "kruise-game"
    certs = work / "certs"
    ca = make_serving_cert(certs)
    provider_config = work / "config.toml"
    shutil.copyfile(MANIFESTS / "kruise-game-config.toml", provider_config)
    kubectl.apply(_kruise_game_webhooks(cfg, ca))

    log = cfg.logs / "kruise-game-manager.log"
    say("up: starting kruise-game-manager")
    processes.start(cfg, "kruise-game-manager", [
        str(cfg.bin("kruise-game", "kruise-game-manager")),
        "--leader-elect=false",
        "--enable-cert-generation=false",
        f"--webhook-server-certs-dir={certs}",
        f"--webhook-port={cfg.ports['kruise_game_webhook']}",
        f"--metrics-bind-address=127.0.0.1:{cfg.ports['kruise_game_metrics']}",
        f"--health-probe-bind-address=127.0.0.1:{cfg.ports['kruise_game_health']}",
        f"--scale-server-bind-address=127.0.0.1:{cfg.ports['kruise_game_scale']}",
        f"--provider-config={provider_config}",
        # The binary's own client rate limits (controller-runtime's, per resource kind), explicit: OKG's Helm
        # chart sets 5/10, under which the settle wait every allocator step makes grows (docs/delivery.md).
        "--api-server-qps=20",
        "--api-server-qps-burst=30",
    ], {
        "KUBECONFIG": str(cfg.kubeconfig),
        # How often the GameServer controller nudges the network plugin (default 5 s):
        # 1 s makes networkStatus Ready within a second or two in tests.
        "NETWORK_PROBE_INTERVAL_TIME": "1",
    })
    health = f"http://127.0.0.1:{cfg.ports['kruise_game_health']}/readyz"
    wait_for("kruise-game-manager /readyz",
             lambda: _alive_and(cfg, "kruise-game-manager", http_ok(health)), 120, log)
    wait_for("kruise-game webhook TLS (verified with our CA)",
             lambda: tls_answers(cfg.ports["kruise_game_webhook"], certs / "ca.crt"), 30, log)
    say("up: kruise-game-manager ready")


# --- readiness probe -----------------------------------------------------------------------------
def probe(cfg: Config, kubectl: Kubectl) -> None:
    """Create a one-instance GameServerSet with a volume and wait until its GameServer exists, its
    PVC is Bound and its pod Running; then delete it. Only then do we know the webhooks answer and
    every controller holds its informers."""
    say("up: probe GameServerSet (webhooks, controllers, storage, scheduler, kwok)")
    started = time.monotonic()
    game_log = cfg.logs / "kruise-game-manager.log"
    ns = "aigc-testbed-probe"
    # The validating webhook may need a moment after its port opens; retry the create briefly.
    wait_for("probe GameServerSet accepted",
             lambda: kubectl.run("apply", "-f", str(MANIFESTS / "probe.yaml"), check=False).returncode == 0,
             30, game_log, interval=1)
    wait_for("probe GameServer probe-0", lambda: kubectl.get_json("gs", "-n", ns, "probe-0") is not None,
             60, game_log)
    wait_for("probe PVC data-probe-0 Bound",
             lambda: ((kubectl.get_json("pvc", "-n", ns, "data-probe-0") or {})
                      .get("status", {}).get("phase") == "Bound"),
             60, cfg.kwok_cluster_dir / "logs/kube-controller-manager.log")
    wait_for("probe pod probe-0 Running",
             lambda: ((kubectl.get_json("pod", "-n", ns, "probe-0") or {})
                      .get("status", {}).get("phase") == "Running"),
             60, cfg.kwok_cluster_dir / "logs/kube-scheduler.log")
    # Deleting the GameServerSet must cascade through the garbage collector, whose REST mapper
    # learns about new CRDs only on its periodic rediscovery (up to 30 s after they appear):
    # until then, deleting a template would leave its StatefulSet and pods behind.
    kubectl.run("delete", "gss", "-n", ns, "probe", "--wait=false")
    wait_for("garbage collection of the probe's Advanced StatefulSet",
             lambda: kubectl.get_json("statefulsets.apps.kruise.io", "-n", ns, "probe") is None,
             90, cfg.kwok_cluster_dir / "logs/kube-controller-manager.log", interval=1)
    kubectl.run("delete", "namespace", ns, "--wait=false")
    say(f"up: probe passed in {time.monotonic() - started:.1f}s")
