"""The dev stack as a newcomer runs it: up with one command, the README's CLI example works
(install, pause, resume an instance), and an interrupt stops everything it started."""
from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import socket
import sys
from pathlib import Path

import pytest

from devstack.local import Ports

from .conftest import REPO, run_ctl

pytestmark = pytest.mark.testbed


def _free_offset() -> int:
    for _ in range(50):
        offset = random.randrange(2000, 14000, 10)
        ports = Ports.from_env({"AIGC_DEV_PORT_OFFSET": str(offset)})
        if not ports.busy():
            return offset
    pytest.skip("no free set of ports for the dev stack")


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.timeout(600)
async def test_dev_stack_up_cli_lifecycle_and_clean_stop(k8s_namespace: str, tmp_path: Path) -> None:
    offset = _free_offset()
    ports = Ports.from_env({"AIGC_DEV_PORT_OFFSET": str(offset)})
    state = tmp_path / "dev"
    env = {**os.environ, "AIGC_DEV_PORT_OFFSET": str(offset)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "devstack", "--namespace", k8s_namespace, "--state-dir", str(state),
        cwd=REPO, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    output: list[str] = []
    try:
        assert proc.stdout is not None
        while True:
            line = (await asyncio.wait_for(proc.stdout.readline(), 300)).decode()
            assert line, "the dev stack exited before it was ready:\n" + "".join(output)
            output.append(line)
            if line.strip() == "ready":
                break
        banner = "".join(output)
        assert "stable-diffusion-cpu, stable-diffusion-eci-cpu" in banner  # the five samples, applied
        assert f"http://127.0.0.1:{ports.bridge}/v1/" in banner and "aigcctl instances install" in banner

        config = {"AIGCCTL_CONFIG": str(state / "aigcctl.yaml")}
        listed = await run_ctl("templates", "list", "-o", "json", env=config)
        assert listed.code == 0, listed
        assert len(json.loads(listed.stdout)) == 5
        alice = {**config, "AIGC_TOKEN_FILE": str(state / "alice.token")}
        installed = await run_ctl("instances", "install", "stable-diffusion-cpu", "-o", "json", env=alice)
        assert installed.code == 0, installed
        short = f"stable-diffusion-cpu/{json.loads(installed.stdout)['id']}"
        for verb, state_name in (("pause", "PAUSED"), ("resume", "RUNNING")):
            done = await run_ctl("instances", verb, short, "-o", "json", env=alice)
            assert done.code == 0 and json.loads(done.stdout)["state"] == state_name, done
        assert (await run_ctl("instances", "delete", short, "--yes", env=alice)).code == 0
        for name in ("cpu", "gpu", "gpushare", "eci-cpu", "eci-gpu"):
            assert (await run_ctl("templates", "delete", f"stable-diffusion-{name}", "--yes", env=config)).code == 0
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
            rest = await asyncio.wait_for(proc.communicate(), 60)
            output.append(rest[0].decode())
    assert proc.returncode == 0, "".join(output)[-4000:]
    assert "[dev] stopped" in "".join(output)
    for port in (ports.bridge, ports.template, ports.auth_http, ports.idp):
        assert not _listening(port), f"port {port} still served after the stack stopped"
