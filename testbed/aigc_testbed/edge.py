"""The edge of the test bed: real Traefik in front of the instances, and real backends behind them.

- Pod IPs on this machine: every fake node gets a `spec.podCIDR` in 198.18.0.0/15 (kwok v0.8.0 takes
  pod IPs from the node's podCIDR, `PodIPsWith` in its pod-ready stage), and that range is routed to
  `lo` as local addresses, so each pod IP can be bound and dialled here.
- `aigc-podnet` (aigc_testbed/podnet.py): one asyncio process listening on every (pod IP, port) an
  EndpointSlice names, answering with the pod's name and the request it received, and logging it.
- Traefik v3 with the `kubernetesIngressNGINX` provider, reading the Ingress objects kruise-game
  creates (IngressClass `nginx`, controller `k8s.io/ingress-nginx`, created here) from the test
  bed's apiserver, as a ServiceAccount with the provider's published RBAC (endpoint + token). No
  route is written by hand.

`up` starts these after the managers; on a bed that is already up without them (started by an
older `up`) it adds them without touching the rest.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

from . import processes
from .config import MANIFESTS, Config
from .kubectl import Kubectl, http_ok
from .util import fail, say, wait_for

INGRESS_CLASS = {
    "apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
    "metadata": {"name": "nginx"},
    # The controller value ingress-nginx answers to; Traefik's provider selects by it (its default).
    "spec": {"controller": "k8s.io/ingress-nginx"},
}


# Pod addresses: 198.18.0.0/15 (RFC 2544's benchmarking range, never routed on the Internet), made local
# to this machine by one route (`ip route replace local 198.18.0.0/15 dev lo`): every address in it can be
# bound and reached here without configuring each one. Not 127.0.0.0/8: the apiserver refuses loopback
# addresses in EndpointSlices, so no Service would ever get an endpoint.
POD_NETWORK = "198.18.0.0/15"


def pod_cidr(index: int) -> str:
    """Node i's pod addresses: 198.18.(16 i).0/20 (4094 addresses; a node runs at most 110 pods)."""
    return f"198.18.{16 * index}.0/20"


def _ip(*args: str) -> subprocess.CompletedProcess:
    cmd = ["ip", *args] if os.geteuid() == 0 else ["sudo", "-n", "ip", *args]
    return subprocess.run(cmd, capture_output=True, text=True)


def ensure_local_route(cfg: Config) -> None:
    """Make POD_NETWORK local (idempotent; needs CAP_NET_ADMIN: root, or sudo without a password).
    A route this added is removed by `down` (a marker in the state directory says so)."""
    show = subprocess.run(["ip", "route", "show", "table", "local", POD_NETWORK], capture_output=True, text=True)
    if show.returncode == 0 and show.stdout.strip():
        return
    result = _ip("route", "replace", "local", POD_NETWORK, "dev", "lo")
    if result.returncode != 0:
        fail(f"cannot make {POD_NETWORK} local (ip route replace local {POD_NETWORK} dev lo): "
             f"{result.stderr.strip()}")
    (cfg.state / "pod-route-added").write_text(POD_NETWORK + "\n")


def remove_local_route(cfg: Config) -> None:
    if (cfg.state / "pod-route-added").exists():
        _ip("route", "del", "local", POD_NETWORK, "dev", "lo")


def set_pod_cidrs(kubectl: Kubectl) -> None:
    """Give every node without one its podCIDR (a podCIDR can be set once, never changed; pods that
    already run keep the addresses they have)."""
    nodes = (kubectl.get_json("nodes") or {}).get("items", [])
    for node in nodes:
        name = node["metadata"]["name"]
        if node.get("spec", {}).get("podCIDR") or not name.startswith("kwok-node-"):
            continue
        index = int(name.rsplit("-", 1)[1])
        kubectl.run("patch", "node", name, "--type=merge", "-p",
                    json.dumps({"spec": {"podCIDR": pod_cidr(index), "podCIDRs": [pod_cidr(index)]}}))


def _credentials(cfg: Config, kubectl: Kubectl) -> dict[str, str]:
    """The admin kubeconfig's server, CA and client certificate as files (podnet reads no YAML)."""
    conf = json.loads(kubectl.run("config", "view", "--raw", "-o", "json").stdout)
    cluster = conf["clusters"][0]["cluster"]
    user = conf["users"][0]["user"]
    work = cfg.state / "podnet"
    work.mkdir(parents=True, exist_ok=True)
    files = {}
    for key, field in (("ca", "certificate-authority"), ("cert", "client-certificate"), ("key", "client-key")):
        if user.get(field) or cluster.get(field):
            path = Path(user.get(field) or cluster.get(field))
            files[key] = str(path if path.is_absolute() else cfg.kwok_cluster_dir / path)
        else:
            data = user.get(f"{field}-data") or cluster.get(f"{field}-data")
            if not data:
                fail(f"the admin kubeconfig has no {field}")
            (work / f"{key}.pem").write_bytes(base64.b64decode(data))
            (work / f"{key}.pem").chmod(0o600)
            files[key] = str(work / f"{key}.pem")
    files["server"] = cluster["server"]
    return files


def start_podnet(cfg: Config, kubectl: Kubectl) -> None:
    creds = _credentials(cfg, kubectl)
    say("up: starting aigc-podnet (the pods' backends)")
    script = Path(__file__).resolve().parent / "podnet.py"
    processes.start(cfg, "aigc-podnet", [
        "aigc-podnet", str(script), "--server", creds["server"], "--ca", creds["ca"], "--cert", creds["cert"],
        "--key", creds["key"], "--log", str(cfg.backend_log), "--ready-port", str(cfg.ports["podnet_ready"]),
        "--network", POD_NETWORK,
    ], {}, executable=sys.executable)
    log = cfg.logs / "aigc-podnet.log"
    wait_for("aigc-podnet ready", lambda: _alive_and("aigc-podnet", cfg, _tcp_open(cfg.ports["podnet_ready"])),
             30, log)


def traefik_token(cfg: Config, kubectl: Kubectl) -> Path:
    """The token of Traefik's ServiceAccount (manifests/traefik-rbac.yaml), written to a file."""
    kubectl.apply((MANIFESTS / "traefik-rbac.yaml").read_text())
    found: dict[str, str] = {}

    def populated() -> bool:
        secret = kubectl.get_json("secret", "-n", "aigc-testbed-edge", "traefik-token") or {}
        found["token"] = (secret.get("data") or {}).get("token", "")
        return bool(found["token"])
    wait_for("the token of Traefik's ServiceAccount", populated, 30,
             cfg.kwok_cluster_dir / "logs/kube-controller-manager.log")
    path = cfg.state / "traefik" / "token"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(base64.b64decode(found["token"]))
    path.chmod(0o600)
    return path


def traefik_config(cfg: Config, token: Path | str = "", ca: str = "") -> str:
    """Traefik's static configuration (JSON is YAML)."""
    return json.dumps({
        "global": {"checkNewVersion": False, "sendAnonymousUsage": False},
        "entryPoints": {
            # `delete`: a header whose name aliases another (X_Auth_Request_User for
            # X-Auth-Request-User) is dropped, as nginx drops names with underscores by default;
            # a backend that folds `_` into `-` (CGI, WSGI) could otherwise be handed an identity.
            "web": {"address": f"127.0.0.1:{cfg.ports['traefik']}", "asDefault": True,
                    "http": {"aliasHeadersStrategy": "delete"}},
            "ping": {"address": f"127.0.0.1:{cfg.ports['traefik_ping']}"},
        },
        "ping": {"entryPoint": "ping"},
        # New Ingresses reach the routing table sooner than the default 2 s (tests wait for them).
        "providers": {"providersThrottleDuration": "200ms",
                      "kubernetesIngressNGINX": {"endpoint": cfg.server, "token": str(token),
                                                 "certAuthFilePath": ca,
                                                 "ingressClass": "nginx",
                                                 "controllerClass": "k8s.io/ingress-nginx",
                                                 "throttleDuration": "200ms"}},
        "log": {"level": "INFO"},
        # Off by default: an unbuffered access log is a write per request, which benchmarks would measure.
        **({"accessLog": {"filePath": str(cfg.logs / "traefik-access.log")}}
           if os.environ.get("AIGC_TESTBED_TRAEFIK_ACCESS_LOG") == "1" else {}),
    }, indent=2)


def start_traefik(cfg: Config, kubectl: Kubectl) -> None:
    kubectl.apply(INGRESS_CLASS)
    conf = cfg.state / "traefik.yaml"
    conf.write_text(traefik_config(cfg, traefik_token(cfg, kubectl), _credentials(cfg, kubectl)["ca"]))
    say("up: starting Traefik (kubernetesIngressNGINX provider)")
    processes.start(cfg, "traefik", [str(cfg.bin("traefik", "traefik")), f"--configFile={conf}"],
                    # A non-empty $KUBECONFIG would win over the endpoint and token (its admin credentials).
                    {"KUBECONFIG": ""})
    ping = f"http://127.0.0.1:{cfg.ports['traefik_ping']}/ping"
    wait_for("Traefik /ping", lambda: _alive_and("traefik", cfg, http_ok(ping)), 60, cfg.logs / "traefik.log")


def start(cfg: Config, kubectl: Kubectl) -> None:
    """Pod CIDRs, the backends, Traefik; each part only if it is not running already."""
    ensure_local_route(cfg)
    set_pod_cidrs(kubectl)
    alive = {p.name: p.alive() for p in processes.edge_procs(cfg)}
    for name, starter in (("aigc-podnet", start_podnet), ("traefik", start_traefik)):
        if not alive[name]:
            proc = next(p for p in processes.edge_procs(cfg) if p.name == name)
            processes.stop(proc)
            starter(cfg, kubectl)
    say(f"up: Traefik on http://127.0.0.1:{cfg.ports['traefik']}, pod requests logged to {cfg.backend_log}")


def healthy(cfg: Config) -> bool:
    return (all(p.alive() for p in processes.edge_procs(cfg))
            and http_ok(f"http://127.0.0.1:{cfg.ports['traefik_ping']}/ping")
            and _tcp_open(cfg.ports["podnet_ready"]))


def _tcp_open(port: int) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return True
    except OSError:
        return False


def _alive_and(name: str, cfg: Config, result: bool) -> bool:
    proc = next(p for p in processes.edge_procs(cfg) if p.name == name)
    if not proc.alive():
        status = processes.exit_status(name)
        fail(f"{name} exited" + (f" ({status})" if status else ""), proc.log)
    return result
