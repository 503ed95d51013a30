"""Processes of the running test bed and their pidfiles.

kwokctl starts the control plane and keeps its pidfiles in `<state>/kwok/clusters/aigc/pids/`;
`testbed up` starts the kruise and kruise-game managers itself and keeps theirs in `<state>/pids/`.
`down` stops exactly these, each only if its command line still names its binary.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .config import Config
from .util import pid_alive, pid_program, read_pidfile, stop_pid


@dataclass
class Proc:
    name: str
    pidfile: Path
    log: Path

    @property
    def pid(self) -> int | None:
        return read_pidfile(self.pidfile)

    def alive(self) -> bool:
        pid = self.pid
        if pid is None or not pid_alive(pid):
            return False
        # Right after it is started a process may show an empty command line for a moment (measured: 12
        # of 300 starts of `sleep` from Python); only another program's name means the pid was reused.
        return pid_program(pid) in (self.name, "")

    def rss_kib(self) -> int:
        pid = self.pid
        if pid is None or not self.alive():
            return 0
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        except OSError:
            pass
        return 0


def kwok_procs(cfg: Config) -> list[Proc]:
    """The control-plane processes kwokctl started (one pidfile per component)."""
    pids = cfg.kwok_cluster_dir / "pids"
    logs = cfg.kwok_cluster_dir / "logs"
    if not pids.is_dir():
        return []
    procs = []
    for pidfile in sorted(pids.glob("*.pid")):
        # kwokctl runs each component through a symlink named after it in its bin/ directory,
        # so the component name is the program name of the process.
        procs.append(Proc(pidfile.stem, pidfile, logs / f"{pidfile.stem}.log"))
    return procs


def own_procs(cfg: Config) -> list[Proc]:
    return [Proc(name, cfg.pids / f"{name}.pid", cfg.logs / f"{name}.log")
            for name in ("kruise-manager", "kruise-game-manager")]


EDGE = ("traefik", "aigc-podnet")  # the proxy and the pods' backends (aigc_testbed/edge.py)


def edge_procs(cfg: Config) -> list[Proc]:
    return [Proc(name, cfg.pids / f"{name}.pid", cfg.logs / f"{name}.log") for name in EDGE]


def all_procs(cfg: Config) -> list[Proc]:
    return kwok_procs(cfg) + own_procs(cfg) + edge_procs(cfg)


_children: dict[str, subprocess.Popen[bytes]] = {}


def exit_status(name: str) -> str:
    """How a manager this process started ended ("exit status 2", "killed by signal 9"), or ''."""
    child = _children.get(name)
    code = child.poll() if child is not None else None
    if code is None:
        return ""
    return f"killed by signal {-code}" if code < 0 else f"exit status {code}"


def start(cfg: Config, name: str, args: list[str], env: dict[str, str], executable: str | None = None) -> Proc:
    """Start a manager detached from our session, output to its log, pid to its pidfile.
    `executable` runs that program with `args[0]` as its argv[0] (how a Python script gets a name
    `alive` and `stop` can recognise)."""
    cfg.pids.mkdir(parents=True, exist_ok=True)
    cfg.logs.mkdir(parents=True, exist_ok=True)
    proc = Proc(name, cfg.pids / f"{name}.pid", cfg.logs / f"{name}.log")
    with proc.log.open("ab") as out:
        child = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 env=os.environ | env, cwd=cfg.state, start_new_session=True,
                                 executable=executable)
    _children[name] = child
    proc.pidfile.write_text(f"{child.pid}\n")
    return proc


def stop(proc: Proc) -> bool:
    pid = proc.pid
    stopped = pid is not None and stop_pid(pid, proc.name)
    proc.pidfile.unlink(missing_ok=True)
    return stopped
