"""The images the Helm chart deploys, built here and run: `scripts/images` builds both with buildah
(from mmdebstrap bases where the official ones cannot be pulled, docs/images.md), then podman runs
the gateway image's `serve all` against the test PostgreSQL, read-only, on the host network, until
every service answers SERVING on grpc.health.v1, and the bridge image in front of it until /readyz
says every backend is SERVING and / serves the dashboard. The final images hold no build tools.

The first build is the slow part (the Debian bases, then the Python dependencies): the fixture
prints its time and the image sizes; later runs reuse the cached bases and buildah's layer cache."""
from __future__ import annotations

import asyncio
import json
import os
import re
import resource
import shutil
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest

from aigc_gateway.api.v1 import auth_pb2, auth_pb2_grpc

from ..plugins.auth_stack import free_port
from ..plugins.gateway import bearer
from ..served import wait_serving
from .conftest import REPO

pytestmark = pytest.mark.timeout(1200)

SERVICES = ("template", "instance", "auth", "usersync")


@pytest.fixture(scope="module")
def images() -> dict[str, str]:
    """Build both images (cached) and return their references, e.g. {"gateway": "localhost/aigc-gateway:0.1.0"}."""
    if os.geteuid() != 0:
        pytest.skip("the image tests run buildah and podman as root (docs/images.md)")
    if not all(shutil.which(tool) for tool in ("buildah", "podman", "mmdebstrap", "runc")):
        pytest.skip("buildah, podman, mmdebstrap or runc missing (scripts/setup.d/70-images.sh installs them)")
    started = time.monotonic()
    result = subprocess.run([str(REPO / "scripts" / "images")], cwd=REPO, capture_output=True, text=True,
                            timeout=1100)
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stdout + result.stderr
    sizes = dict(line.split(" ", 1) for line in result.stdout.splitlines())
    print(f"\nscripts/images: {elapsed:.1f} s; sizes: {sizes}")
    refs = {name.split(":")[0]: f"localhost/{name}" for name in sizes}
    return {"gateway": refs["aigc-gateway"], "bridge": refs["aigc-gateway-bridge"]}


def _podman_run(name: str, image: str, *args: str, env: dict[str, str]) -> None:
    # runc, not crun: crun refuses this host's cgroup v1/v2 hybrid; the limits stay within the
    # caller's, which podman's defaults exceed where the process may not raise them (docs/images.md).
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    command = ["podman", "run", "--detach", "--name", name, "--runtime", "runc", "--network", "host",
               "--read-only", "--ulimit", f"nofile={nofile}:{nofile}", "--ulimit", "nproc=4096:4096"]
    for key, value in env.items():
        command += ["--env", f"{key}={value}"]
    subprocess.run([*command, image, *args], check=True, capture_output=True, text=True, timeout=120)


@contextmanager
def _container(image: str, *args: str, env: dict[str, str]) -> Iterator[str]:
    name = f"aigc-image-test-{uuid.uuid4().hex[:8]}"
    _podman_run(name, image, *args, env=env)
    try:
        yield name
    finally:
        logs = subprocess.run(["podman", "logs", "--tail", "30", name], capture_output=True, text=True)
        print(f"--- {name} ({image}) last log lines:\n{logs.stdout}{logs.stderr}")
        subprocess.run(["podman", "rm", "--force", "--time", "10", name], capture_output=True)


def _podman(*args: str) -> str:
    return subprocess.run(["podman", *args], check=True, capture_output=True, text=True, timeout=60).stdout.strip()


def _running(container: str) -> None:
    assert _podman("inspect", "--format", "{{.State.Running}}", container) == "true", \
        f"the gateway container {container} exited"


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()
    except OSError:
        return 0, ""


@pytest.mark.postgres
async def test_gateway_image_serves_health_and_the_bridge_image_fronts_it(
        images: dict[str, str], database_url: str, issuer) -> None:
    ports = {name: free_port() for name in (*SERVICES, "metrics", "bridge")}
    env = {
        "AIGC_GATEWAY__DATABASE__URL": database_url,
        "AIGC_GATEWAY__OIDC__ISSUER": issuer.url,
        "AIGC_GATEWAY__OIDC__AUDIENCE": json.dumps([issuer.audience]),
        "AIGC_GATEWAY__SERVERS__METRICS_LISTEN": f"127.0.0.1:{ports['metrics']}",
        **{f"AIGC_GATEWAY__SERVERS__{s.upper()}__LISTEN": f"127.0.0.1:{ports[s]}" for s in SERVICES},
    }
    started = time.monotonic()
    with _container(images["gateway"], "serve", "all", env=env) as gateway:
        deadline = time.monotonic() + 120
        for service in SERVICES:
            await wait_serving(ports[service], deadline, lambda: _running(gateway), "the gateway container's server")
        print(f"\ngateway container SERVING on all four services {time.monotonic() - started:.1f} s after podman run")

        # Its processes run as the image's non-root user.
        pid = _podman("inspect", "--format", "{{.State.Pid}}", gateway)
        uids = re.search(r"^Uid:\s+(\d+)\s+(\d+)", Path(f"/proc/{pid}/status").read_text(), re.M)
        assert uids and uids.groups() == ("10001", "10001")

        async with grpc.aio.insecure_channel(f"127.0.0.1:{ports['auth']}") as channel:
            me = await auth_pb2_grpc.AuthServiceStub(channel).WhoAmI(
                auth_pb2.WhoAmIRequest(), metadata=bearer(issuer.mint("carol")))
            assert me.subject == "carol"

        bridge_env = {"AIGC_BRIDGE_LISTEN": f"127.0.0.1:{ports['bridge']}",
                      **{f"AIGC_BRIDGE_{s.upper()}": f"127.0.0.1:{ports[s]}" for s in SERVICES}}
        with _container(images["bridge"], env=bridge_env):
            base = f"http://127.0.0.1:{ports['bridge']}"
            deadline = time.monotonic() + 60
            while (ready := _get(f"{base}/readyz"))[0] != 200:
                assert time.monotonic() < deadline, f"the bridge container never became ready: {ready}"
                await asyncio.sleep(0.2)
            assert json.loads(ready[1]) == {"status": "SERVING"}
            status, index = _get(f"{base}/")
            assert status == 200 and "<div id=\"app\"" in index

        _podman("stop", "--time", "20", gateway)
        assert _podman("inspect", "--format", "{{.State.ExitCode}}", gateway) == "0"


@contextmanager
def _rootfs(image: str) -> Iterator[Path]:
    container = subprocess.run(["buildah", "from", "--quiet", image], check=True, capture_output=True,
                               text=True).stdout.strip()
    try:
        mount = subprocess.run(["buildah", "mount", container], check=True, capture_output=True,
                               text=True).stdout.strip()
        yield Path(mount)
    finally:
        subprocess.run(["buildah", "rm", container], capture_output=True)


def _config(image: str) -> dict:
    return json.loads(subprocess.run(["buildah", "inspect", "--type", "image", image], check=True,
                                     capture_output=True, text=True).stdout)["OCIv1"]["config"]


def test_final_images_hold_no_build_tools_and_run_non_root(images: dict[str, str]) -> None:
    with _rootfs(images["gateway"]) as root:
        venv = root / "opt" / "aigc-gateway"
        site = next((venv / "lib").glob("python3*/site-packages"))
        assert (venv / "bin" / "aigc-gateway").exists() and (venv / "bin" / "aigcctl").exists()
        assert not list((venv / "bin").glob("pip*")) and not list(site.glob("pip")), "pip in the image"
        for tool in ("gcc", "cc", "g++", "make", "apt", "apt-get", "go", "npm"):
            assert not (root / "usr" / "bin" / tool).exists(), tool
        lists = root / "var" / "lib" / "apt" / "lists"
        assert not lists.exists() or not [p for p in lists.iterdir() if p.is_file() and p.name != "lock"]
        assert not (root / "root" / ".cache").exists() and not (root / "src").exists()
    assert _config(images["gateway"])["User"] == "10001:10001"

    with _rootfs(images["bridge"]) as root:
        assert sorted(p.name for p in root.iterdir() if p.name not in ("dev", "proc", "sys", "etc", "run")) == \
            ["aigc-bridge", "dashboard"]
        assert (root / "dashboard" / "index.html").exists()
    assert _config(images["bridge"])["User"] == "65532:65532"


def _final_stage(dockerfile: Path) -> list[str]:
    lines = [line for line in dockerfile.read_text().splitlines() if line and not line.startswith("#")]
    start = max(i for i, line in enumerate(lines) if line.startswith("FROM "))
    return [line for line in lines[start:] if not line.startswith("COPY ")]


def test_the_prebuilt_bridge_variant_has_the_same_final_stage() -> None:
    """bridge/Dockerfile.prebuilt (used where the golang and node images cannot be pulled) must make
    the image bridge/Dockerfile makes: the same final stage but for where its two COPYs come from."""
    assert _final_stage(REPO / "bridge" / "Dockerfile") == _final_stage(REPO / "bridge" / "Dockerfile.prebuilt")
    prebuilt = (REPO / "bridge" / "Dockerfile.prebuilt").read_text()
    assert "COPY aigc-bridge /aigc-bridge" in prebuilt and "COPY dashboard /dashboard" in prebuilt
