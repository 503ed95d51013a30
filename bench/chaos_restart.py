"""The two real restarts of bench/chaos.py and tests/chaos/test_restarts.py.

- **PostgreSQL**: the run's own server (`scripts/postgres.sh start <dir>`, a private data directory on a free
  port; the shared test PostgreSQL is never touched), crashed with `pg_ctl stop -m immediate` (no shutdown
  checkpoint, every backend killed: what a power cut or an OOM kill of the postmaster does) and started again on
  the same port (`scripts/postgres.sh restart`), which replays the WAL. The script runs the server with
  `synchronous_commit=off`; the chaos database turns it back on, so a commit the services were told of survives
  the crash as it would in production (fsync stays off: a process crash leaves the kernel's page cache intact).
- **kube-apiserver**: `testbed/testbed restart kube-apiserver <down seconds>` (testbed/aigc_testbed/restart.py):
  the process killed, started again with the same command line, and the command returns once the bed is healthy
  again. The bed is shared with other tests: the restart holds the bed's lock and is kept short.
"""
from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "postgres.sh"


class PrivatePostgres:
    """A PostgreSQL server of this run's own, in a directory of its own (removed by :meth:`stop`)."""

    def __init__(self) -> None:
        # The server runs as the postgres user when we are root: its directory must be reachable by it.
        self.root = Path(tempfile.mkdtemp(prefix="aigc-chaos-pg-"))
        self.root.chmod(0o755)
        self.dir = self.root / "pg"
        self.server_url = ""

    def _script(self, command: str) -> str:
        done = subprocess.run([str(SCRIPT), command, str(self.dir)], capture_output=True, text=True,
                              stdin=subprocess.DEVNULL, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"scripts/postgres.sh {command} failed: {done.stderr[-2000:]}")
        return done.stdout

    def start(self) -> str:
        """Start it; the server's URL (database `postgres`)."""
        self.server_url = self._script("start").strip().split("DATABASE_URL=", 1)[1]
        return self.server_url

    async def create_database(self, name: str) -> str:
        """A database made by the migrations, every commit durable across a crash; its URL."""
        import asyncpg

        from aigc_gateway.db.migrate import upgrade

        admin = await asyncpg.connect(self.server_url.replace("postgresql+asyncpg://", "postgresql://"))
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
            await admin.execute(f'ALTER DATABASE "{name}" SET synchronous_commit = on')
        finally:
            await admin.close()
        url = self.server_url.rsplit("/", 1)[0] + f"/{name}"
        await asyncio.to_thread(upgrade, url)
        return url

    async def crash(self) -> float:
        """`pg_ctl stop -m immediate`; seconds it took."""
        began = time.monotonic()
        await asyncio.to_thread(self._script, "crash")
        return time.monotonic() - began

    async def restart(self) -> float:
        """Start the crashed server again on its port (crash recovery); seconds until it accepts connections."""
        began = time.monotonic()
        await asyncio.to_thread(self._script, "restart")
        return time.monotonic() - began

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join((self.dir / "postgres.log").read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        try:
            self._script("stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


class ApiserverRestart:
    """`testbed restart kube-apiserver <down>`, run in the background while the load goes on."""

    def __init__(self, down_seconds: float):
        self.down_seconds = down_seconds
        self.proc: asyncio.subprocess.Process | None = None
        self.report = ""

    async def begin(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, str(REPO / "testbed" / "testbed"), "restart", "kube-apiserver", f"{self.down_seconds:g}",
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            env=os.environ | {"PYTHONUNBUFFERED": "1"})

    async def end(self) -> str:
        """Wait until the apiserver is back and the bed healthy; the command's own account of it."""
        assert self.proc is not None
        out, _ = await self.proc.communicate()
        text = out.decode(errors="replace")
        if self.proc.returncode != 0:
            raise RuntimeError(f"testbed restart kube-apiserver failed ({self.proc.returncode}): {text[-2000:]}")
        lines = [line.split("] ", 1)[-1].removeprefix("restart: ") for line in text.splitlines() if "restart:" in line]
        self.report = "; ".join(line for line in lines if "exited" in line or " ready " in line)
        return self.report
