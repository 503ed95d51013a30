"""The test bed's liveness check of the processes it starts (testbed/aigc_testbed/processes.py)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "testbed"))

from aigc_testbed.processes import Proc  # noqa: E402


def test_a_process_just_started_is_alive_and_a_killed_one_is_not(tmp_path: Path) -> None:
    """Right after Popen returns, /proc/<pid>/cmdline is sometimes still empty (12 of 300 starts on a loaded
    machine, 0 when idle):
    that must not read as "exited", or `testbed up` starts a second manager beside the first."""
    pidfile = tmp_path / "sleep.pid"
    proc = Proc("sleep", pidfile, tmp_path / "sleep.log")
    wrong = []
    for attempt in range(300):
        with (tmp_path / "sleep.log").open("ab") as out:  # as processes.start does
            child = subprocess.Popen(["sleep", "30"], stdout=out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        pidfile.write_text(f"{child.pid}\n")
        if not proc.alive():
            wrong.append(f"{attempt}: alive read as dead")
        child.kill()
        child.wait()
        if proc.alive():
            wrong.append(f"{attempt}: dead read as alive")
    assert wrong == []


def test_another_program_on_the_pid_is_not_ours(tmp_path: Path) -> None:
    child = subprocess.Popen(["sleep", "30"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    try:
        (tmp_path / "x.pid").write_text(f"{child.pid}\n")
        while Path(f"/proc/{child.pid}/cmdline").read_bytes() == b"":
            pass  # the moment right after the start, when nobody can tell
        assert not Proc("kruise-game-manager", tmp_path / "x.pid", tmp_path / "x.log").alive()
    finally:
        child.kill()
        child.wait()
