"""Small shared helpers: progress output, failure, log tails, processes, waiting."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

_T0 = time.monotonic()


class TestbedError(Exception):
    """A failure with a message for the operator (and possibly a log to show)."""

    def __init__(self, message: str, log: Path | None = None):
        super().__init__(message)
        self.log = log


def say(message: str) -> None:
    """Progress line with the time since the command started; stderr keeps stdout for `env`."""
    print(f"[testbed {time.monotonic() - _T0:6.1f}s] {message}", file=sys.stderr, flush=True)


def fail(message: str, log: Path | None = None) -> None:
    raise TestbedError(message, log)


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        data = path.read_text(errors="replace").splitlines()
    except OSError as exc:
        return f"(cannot read {path}: {exc})"
    return f"--- last {min(lines, len(data))} lines of {path} ---\n" + "\n".join(data[-lines:])


def wait_for(what: str, check: Callable[[], bool], timeout: float, log: Path | None = None,
             interval: float = 0.5) -> None:
    """Poll `check` until it returns True; fail naming `what` (and the log to blame) on timeout."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
            last_error = None
        except TestbedError:
            raise  # a definite failure (e.g. the process died): no point waiting it out
        except Exception as exc:  # noqa: BLE001 - any other error just means "not yet"
            last_error = exc
        time.sleep(interval)
    detail = f" (last error: {last_error})" if last_error else ""
    fail(f"timed out after {timeout:.0f}s waiting for {what}{detail}", log)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped) counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def pid_program(pid: int) -> str:
    """The base name of the program a process was started as (argv[0]), '' if it is gone."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            argv0 = fh.read().split(b"\0", 1)[0].decode(errors="replace")
    except OSError:
        return ""
    return os.path.basename(argv0)


def read_pidfile(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def stop_pid(pid: int, expect: str, timeout: float = 10.0) -> bool:
    """SIGTERM then SIGKILL one process, but only if it still runs the program `expect`
    (a pidfile can outlive its process and the number be reused)."""
    if not pid_alive(pid) or pid_program(pid) != expect:
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)
    return True
