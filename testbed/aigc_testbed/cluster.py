"""`testbed up` / `down` / `status`: the control plane (through kwokctl) and the add-ons."""

from __future__ import annotations

import os
import shutil
import string
import subprocess
import sys
import time
from pathlib import Path

from . import addons, edge, processes
from .build import Builder, is_built
from .config import CLUSTER_NAME, MANIFESTS, Config
from .kubectl import Kubectl, http_ok
from .util import TestbedError, fail, log_tail, say, wait_for

HOSTPATH_ROOT = "/tmp/hostpath_pv/"  # where kube-controller-manager's hostPath provisioner writes


def kwokctl_env(cfg: Config) -> dict[str, str]:
    k8s_bin = cfg.bin("kubernetes", "kubectl").parent
    return os.environ | {
        "KWOK_WORKDIR": str(cfg.kwok_workdir),
        # Never let kwokctl touch the user's ~/.kube/config (create also gets --kubeconfig "").
        "KUBECONFIG": str(cfg.kwok_cluster_dir / "kubeconfig.yaml"),
        # kwokctl shells out to kubectl; make sure it is the one we built.
        "PATH": f"{k8s_bin}:{os.environ.get('PATH', '')}",
    }


def kwokctl(cfg: Config, *args: str, log: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    cmd = [str(cfg.bin("kwok", "kwokctl")), *args]
    with log.open("a") as fh:
        fh.write(f"$ {' '.join(cmd)}\n")
        fh.flush()
        return subprocess.run(cmd, env=kwokctl_env(cfg), stdout=fh, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL, timeout=timeout)


def healthy(cfg: Config) -> bool:
    """Every process alive, the apiserver ready and both managers answering /readyz (the edge,
    Traefik and the pods' backends, is checked apart: `up` adds it to a bed that lacks it)."""
    procs = processes.kwok_procs(cfg) + processes.own_procs(cfg)
    if len(procs) < 7 or not all(p.alive() for p in procs):
        return False
    kubectl = Kubectl(cfg, cfg.logs / "kubectl.log")
    return (kubectl.ready()
            and http_ok(f"http://127.0.0.1:{cfg.ports['kruise_health']}/readyz")
            and http_ok(f"http://127.0.0.1:{cfg.ports['kruise_game_health']}/readyz"))


def _healthy_with_patience(cfg: Config) -> bool:
    """Others may be using the bed: on a busy machine a health endpoint can be slow, so a bed
    whose processes all run gets a few chances before `up` replaces it."""
    for attempt in range(4):
        if healthy(cfg):
            return True
        if not all(p.alive() for p in processes.kwok_procs(cfg) + processes.own_procs(cfg)) or attempt == 3:
            return False
        time.sleep(3)
    return False


def up(cfg: Config) -> None:
    start = time.monotonic()
    if cfg.state.exists():
        if _healthy_with_patience(cfg):
            if not edge.healthy(cfg):
                # A bed started before the edge existed, or whose Traefik/backends died: add them
                # without disturbing the sessions using the rest.
                say("up: the control plane and managers are healthy; (re)starting the edge")
                try:
                    if not is_built(cfg):
                        Builder(cfg).build_all()
                    _start_edge(cfg, Kubectl(cfg, cfg.logs / "kubectl.log"))
                except TestbedError as exc:
                    _report_failure(cfg, exc)
                    raise SystemExit(1) from None
            # tests/plugins/testbed.py looks for this phrase to know it did not start the bed.
            say(f"up: already running and healthy (state {cfg.state})")
            return
        say("up: stale or unhealthy state found; tearing it down first")
        down(cfg)
    if not is_built(cfg):
        Builder(cfg).build_all()
    for d in (cfg.state, cfg.logs, cfg.pids):
        d.mkdir(parents=True, exist_ok=True)
    try:
        _start_control_plane(cfg)
        kubectl = Kubectl(cfg, cfg.logs / "kubectl.log")
        _cluster_objects(cfg, kubectl)
        addons.start_with_retry(addons.start_kruise, cfg, kubectl, "kruise-manager")
        addons.start_with_retry(addons.start_kruise_game, cfg, kubectl, "kruise-game-manager")
        addons.probe(cfg, kubectl)
        _start_edge(cfg, kubectl)
    except TestbedError as exc:
        _report_failure(cfg, exc)
        say("up: stopping what was started; logs stay in the state directory until `down`")
        _stop_processes(cfg)
        raise SystemExit(1) from None
    say(f"up: test bed ready in {time.monotonic() - start:.0f}s; "
        f"RSS {sum(p.rss_kib() for p in processes.all_procs(cfg)) // 1024} MiB")


def _start_edge(cfg: Config, kubectl: Kubectl) -> None:
    """Traefik and the pods' backends. AIGC_TESTBED_EDGE_OPTIONAL=1 turns a failure here into a warning
    (the control plane and managers stay up for the tests that do not need the edge)."""
    try:
        edge.start(cfg, kubectl)
    except TestbedError as exc:
        if os.environ.get("AIGC_TESTBED_EDGE_OPTIONAL", "0") != "1":
            raise
        say(f"up: WARNING: the edge (Traefik, pod backends) did not start: {exc}")
        if exc.log is not None:
            print(log_tail(exc.log, 20), file=sys.stderr)


def _report_failure(cfg: Config, exc: TestbedError) -> None:
    say(f"up: FAILED: {exc}")
    if exc.log is not None:
        print(log_tail(exc.log, 40), file=sys.stderr)
    # Any process that died on the way is the likelier culprit: show its log too.
    for proc in processes.all_procs(cfg):
        if not proc.alive() and proc.log != exc.log:
            say(f"up: {proc.name} is not running")
            print(log_tail(proc.log, 25), file=sys.stderr)


def _start_control_plane(cfg: Config) -> None:
    say("up: starting etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok (kwokctl)")
    template = string.Template((MANIFESTS / "kwokctl.yaml").read_text())
    k8s_bin = cfg.bin("kubernetes", "kubectl").parent
    conf = cfg.state / "kwokctl.yaml"
    conf.write_text(template.substitute(
        cfg.ports, kube_version=cfg.versions["kubernetes"], k8s_bin=k8s_bin,
        etcd_bin=cfg.bin("etcd", "etcd"), kwok_bin=cfg.bin("kwok", "kwok")))
    log = cfg.logs / "kwokctl.log"
    result = kwokctl(cfg, "-c", str(conf), "create", "cluster", "--name", CLUSTER_NAME,
                     "--kubeconfig", "", "--wait", "2m", log=log)
    if result.returncode != 0:
        fail("kwokctl create cluster failed", log)
    (cfg.kubeconfig).symlink_to(cfg.kwok_cluster_dir / "kubeconfig.yaml")
    kubectl = Kubectl(cfg, cfg.logs / "kubectl.log")
    wait_for("kube-apiserver /readyz", kubectl.ready, 60, cfg.kwok_cluster_dir / "logs/kube-apiserver.log")
    say("up: control plane ready")


def _cluster_objects(cfg: Config, kubectl: Kubectl) -> None:
    """StorageClasses, fake nodes, namespaces and every CRD the controllers watch."""
    kubectl.apply((MANIFESTS / "storageclasses.yaml").read_text())
    kubectl.apply(addons.nodes(int(os.environ.get("AIGC_TESTBED_NODES", "2"))))
    kubectl.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}
                   for ns in ("kruise-system", "kruise-game-system")])
    crd_files = sorted(cfg.kruise_config.joinpath("crd").glob("*.yaml"))
    # kruise-game's own CRDs; the Alibaba/Tencent cloud ones belong to providers we leave off.
    crd_files += sorted(cfg.kruise_game_config.joinpath("crd").glob("game.kruise.io_*.yaml"))
    for path in crd_files:
        kubectl.apply(path.read_text(), server_side=True)
    kubectl.run("wait", "--for=condition=Established", "--timeout=60s", "crd", "--all")
    say(f"up: {len(crd_files)} CRDs established, StorageClasses and nodes created")


def _stop_processes(cfg: Config) -> None:
    """Stop our managers, then the control plane from the top down, each by its pidfile and only
    if that pid still runs the component's binary. (Not `kwokctl delete cluster`: it signals
    whatever pid its pidfiles name, which after a reboot or a killed session may be another
    process.) The state directory, logs included, is left to the caller."""
    for proc in processes.edge_procs(cfg) + processes.own_procs(cfg):
        processes.stop(proc)
    order = ["kwok-controller", "kube-scheduler", "kube-controller-manager", "kube-apiserver", "etcd"]
    for proc in sorted(processes.kwok_procs(cfg),
                       key=lambda p: order.index(p.name) if p.name in order else -1):
        processes.stop(proc)


def _hostpath_dirs(cfg: Config) -> list[str]:
    """Directories of this cluster's hostPath PVs, to remove after the cluster is gone."""
    if not cfg.kubeconfig.exists():
        return []
    try:
        pvs = Kubectl(cfg, Path(os.devnull)).get_json("pv") or {"items": []}
    except TestbedError:
        return []
    paths = [pv["spec"].get("hostPath", {}).get("path", "") for pv in pvs["items"]]
    return [p for p in paths if p.startswith(HOSTPATH_ROOT)]


def down(cfg: Config) -> None:
    if not cfg.state.exists():
        say(f"down: nothing to do ({cfg.state} does not exist)")
        return
    alive = [p for p in processes.all_procs(cfg) if p.alive()]
    volumes = _hostpath_dirs(cfg) if alive else []
    say(f"down: stopping {len(alive)} processes")
    _stop_processes(cfg)
    for path in volumes:
        shutil.rmtree(path, ignore_errors=True)
    edge.remove_local_route(cfg)
    shutil.rmtree(cfg.state, ignore_errors=True)
    say(f"down: removed {cfg.state} and {len(volumes)} hostPath volumes")


def status(cfg: Config) -> bool:
    procs = processes.all_procs(cfg)
    if not cfg.state.exists():
        print(f"test bed is down (no state in {cfg.state})")
        return False
    for proc in procs:
        state = "running" if proc.alive() else "STOPPED"
        print(f"{proc.name:24} {state:8} pid {proc.pid or '-':>7}  rss {proc.rss_kib() // 1024:5} MiB"
              f"  log {proc.log}")
    ok = healthy(cfg) and edge.healthy(cfg)
    total = sum(p.rss_kib() for p in procs) // 1024
    print(f"apiserver {cfg.server}  kubeconfig {cfg.kubeconfig}")
    print(f"total RSS {total} MiB; {'healthy' if ok else 'NOT healthy'}")
    return ok
