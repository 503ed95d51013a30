"""`testbed restart <component>`: stop one control-plane process and start it again, as a crash and a
supervisor's restart would (the chaos tests' real apiserver restart, docs/chaos.md).

The new process gets exactly the old one's command line, environment, working directory and log, read from
/proc before it is stopped (kwokctl started it; its pidfile is rewritten with the new pid, so `status` and
`down` find it). The command returns once the apiserver answers /readyz and the whole bed is healthy again:
the bed is shared, so nobody may be left with a half-restarted one.

Another component may die of the outage: kube-controller-manager and kube-scheduler run with leader election
(their default) and exit when they cannot renew their lease for 10 s, as they do in a real cluster, where the
kubelet restarts them. Here the restart does that kubelet's part: every kwokctl process that was running before
and is gone afterwards is started again from its own saved command line, and reported. The kruise and
kruise-game managers run without leader election and reconnect on their own; they are not restarted (if one
died, the bed is reported unhealthy and `testbed up` starts it again).

`restart`, `up` and `down` hold the same lock, so a concurrent `up` waits instead of finding the bed unhealthy
mid-restart and replacing it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from . import processes
from .config import Config
from .kubectl import Kubectl
from .util import TestbedError, fail, pid_alive, say, stop_pid, wait_for


@dataclass
class Saved:
    """What it takes to start a process again as it was."""

    proc: processes.Proc
    argv: list[str]
    env: dict[str, str]
    cwd: str

    @classmethod
    def read(cls, proc: processes.Proc) -> Saved:
        pid = proc.pid
        if pid is None or not proc.alive():
            fail(f"{proc.name} is not running", proc.log)
        assert pid is not None
        base = Path(f"/proc/{pid}")
        argv = [a.decode() for a in base.joinpath("cmdline").read_bytes().split(b"\0") if a]
        env = dict(e.decode(errors="replace").split("=", 1)
                   for e in base.joinpath("environ").read_bytes().split(b"\0") if b"=" in e)
        return cls(proc, argv, env, os.readlink(base / "cwd"))

    def start(self) -> int:
        """Start it detached (its own session, parented to init once we exit), output appended to its log."""
        with self.proc.log.open("ab") as out:
            child = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=self.env, cwd=self.cwd, start_new_session=True)
        self.proc.pidfile.write_text(f"{child.pid}\n")
        return child.pid


def restart(cfg: Config, name: str, *, down_seconds: float = 0.0, crash: bool = True,
            timeout: float = 180.0) -> dict[str, float]:
    """Stop ``name`` (SIGKILL when ``crash``, else SIGTERM), wait ``down_seconds``, start it again, wait until
    the bed is healthy. Returns timings: ``stopped`` (s to stop), ``ready`` (start -> /readyz), ``healthy``
    (start -> every process alive and ready) and ``restarted_others`` (how many died of it and were restarted)."""
    from .cluster import healthy  # cluster imports this module's command; import late to keep them apart

    saved = {p.name: Saved.read(p) for p in processes.kwok_procs(cfg) if p.alive()}
    if name not in saved:
        fail(f"no running control-plane process named {name!r} (have: {', '.join(sorted(saved))})")
    target = saved[name]
    pid = target.proc.pid
    assert pid is not None
    began = time.monotonic()
    if crash:
        os.kill(pid, signal.SIGKILL)
        while pid_alive(pid):
            time.sleep(0.05)
    else:
        stop_pid(pid, name, timeout=30)
    stopped = time.monotonic() - began
    say(f"restart: {name} (pid {pid}) stopped in {stopped:.1f}s; down for {down_seconds:.1f}s")
    time.sleep(down_seconds)
    started = time.monotonic()
    say(f"restart: {name} started again as pid {target.start()}")
    kubectl = Kubectl(cfg, cfg.logs / "kubectl.log")
    wait_for("kube-apiserver /readyz", kubectl.ready, timeout, target.proc.log)
    ready = time.monotonic() - started
    others = 0
    deadline = time.monotonic() + timeout
    while not healthy(cfg):
        for other in saved.values():
            if other is not target and not other.proc.alive():
                others += 1
                say(f"restart: {other.proc.name} exited during the outage; started again as pid {other.start()}")
        if time.monotonic() > deadline:
            raise TestbedError(f"the bed is not healthy {timeout:.0f}s after {name} came back "
                               "(testbed status shows what is down)")
        time.sleep(0.5)
    took = time.monotonic() - started
    say(f"restart: {name} ready {ready:.1f}s after its start, the bed healthy after {took:.1f}s"
        + (f" ({others} other process(es) restarted)" if others else ""))
    return {"stopped": stopped, "ready": ready, "healthy": took, "restarted_others": float(others)}
