"""pytest plugin: the Kubernetes test bed (kube-apiserver + kruise + kruise-game, see docs/testbed.md).

- marker `testbed`: the test needs the test bed; such tests get the `testbed` and `k8s_namespace`
  fixtures automatically.
- `testbed` (session): started lazily, only when a test asks for it. If $KUBECONFIG names a
  reachable cluster that has the GameServerSet CRD, that cluster is used as it is; otherwise
  `testbed/testbed up` runs, and `testbed/testbed down` runs at the end of the session only if this
  session started it (AIGC_TESTBED_KEEP=1 keeps it running).
- `k8s_namespace` (function): a fresh, uniquely named namespace, deleted after the test.

Both fixtures are synchronous; Kubernetes calls they make run in a private thread with its own
event loop, so they never touch the tests' event loops. Tests create their own
kubernetes_asyncio clients (see tests/plugins/kube.py).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import subprocess
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
TESTBED_CLI = REPO / "testbed" / "testbed"
GSS_CRD = "gameserversets.game.kruise.io"
# A cold `up` builds everything first (tens of minutes on 2 cores); a warm one takes about a minute.
UP_TIMEOUT = float(os.environ.get("AIGC_TESTBED_UP_TIMEOUT", "3600"))
# The namespace controller takes 5-25 s to empty a namespace; names are unique, so by default
# teardown does not wait for it (set a number of seconds to wait, bounded, for a tidier cluster).
NAMESPACE_DELETE_WAIT = float(os.environ.get("AIGC_TESTBED_NS_DELETE_WAIT", "0"))


@dataclass(frozen=True)
class Testbed:
    """What a test needs to reach the cluster."""

    __test__ = False  # not a test class, whatever its name

    kubeconfig: Path
    domain: str  # root domain the sample templates' ${DOMAIN} is replaced with
    state_dir: Path | None  # None when an external cluster ($KUBECONFIG) is used
    kubectl: str | None  # the test bed's kubectl, when it is our test bed
    started_here: bool  # this session ran `testbed up` (and will run `testbed down`)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "testbed: needs the Kubernetes test bed")


def run_in_thread(make_coro: Callable[[], Awaitable[Any]], timeout: float = 120) -> Any:
    """Run a coroutine to completion on a new event loop in a worker thread, so that sync fixtures
    can use kubernetes_asyncio without touching (or closing) pytest-asyncio's loops."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(make_coro())).result(timeout=timeout)


async def _has_gss_crd(kubeconfig: Path) -> bool:
    from kubernetes_asyncio import client, config

    api = await config.new_client_from_config(config_file=str(kubeconfig))
    async with api:
        crd = await client.ApiextensionsV1Api(api).read_custom_resource_definition(
            GSS_CRD, _request_timeout=5)
        return any(c.type == "Established" and c.status == "True" for c in crd.status.conditions or [])


def _external_cluster() -> Path | None:
    """$KUBECONFIG, if it names a reachable cluster with the GameServerSet CRD established."""
    value = os.environ.get("KUBECONFIG", "")
    if not value or os.pathsep in value or not Path(value).is_file():
        return None
    try:
        return Path(value) if run_in_thread(lambda: _has_gss_crd(Path(value)), timeout=20) else None
    except Exception:  # noqa: BLE001 - unreachable, no CRD, bad file: all mean "not usable"
        return None


def _cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([str(TESTBED_CLI), *args], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


@pytest.fixture(scope="session")
def testbed() -> Iterator[Testbed]:
    env = dict(line.split("=", 1) for line in _cli("env").stdout.splitlines() if "=" in line)
    domain = os.environ.get("AIGC_TESTBED_DOMAIN", env.get("AIGC_TESTBED_DOMAIN", "aigc.test"))
    external = _external_cluster()
    if external is not None:
        # It may be our own test bed, started by someone else (e.g. `export $(testbed/testbed env)`).
        ours = external.resolve() == Path(env["KUBECONFIG"]).resolve()
        yield Testbed(kubeconfig=external, domain=domain,
                      state_dir=Path(env["AIGC_TESTBED_STATE"]) if ours else None,
                      kubectl=env.get("AIGC_TESTBED_KUBECTL") if ours else None, started_here=False)
        return

    result = _cli("up", timeout=UP_TIMEOUT)
    if result.returncode != 0:
        pytest.fail(f"testbed up failed (exit {result.returncode}):\n{result.stderr[-6000:]}",
                    pytrace=False)
    # `up` is a no-op when another session brought the bed up first (it serialises on a lock):
    # then that session owns it and we must not take it down.
    started = "already running and healthy" not in result.stderr
    bed = Testbed(kubeconfig=Path(env["KUBECONFIG"]), domain=domain,
                  state_dir=Path(env["AIGC_TESTBED_STATE"]), kubectl=env.get("AIGC_TESTBED_KUBECTL"),
                  started_here=started)
    try:
        yield bed
    finally:
        if bed.started_here and os.environ.get("AIGC_TESTBED_KEEP") != "1":
            _cli("down", timeout=300)


async def _create_namespace(kubeconfig: Path, name: str) -> None:
    from kubernetes_asyncio import client, config

    api = await config.new_client_from_config(config_file=str(kubeconfig))
    async with api:
        await client.CoreV1Api(api).create_namespace(
            client.V1Namespace(metadata=client.V1ObjectMeta(
                name=name, labels={"aigc-gateway.test/owner": "pytest"})))


async def _delete_namespace(kubeconfig: Path, name: str, wait: float) -> None:
    """Delete, then wait a bounded time for it to go (never forever: names are unique anyway)."""
    from kubernetes_asyncio import client, config
    from kubernetes_asyncio.client.exceptions import ApiException

    api = await config.new_client_from_config(config_file=str(kubeconfig))
    async with api:
        core = client.CoreV1Api(api)
        try:
            await core.delete_namespace(name, propagation_policy="Background")
        except ApiException as exc:
            if exc.status != 404:
                raise
            return
        if wait <= 0:
            return
        deadline = asyncio.get_running_loop().time() + wait
        while asyncio.get_running_loop().time() < deadline:
            try:
                await core.read_namespace(name)
            except ApiException as exc:
                if exc.status == 404:
                    return
                raise
            await asyncio.sleep(0.5)


@pytest.fixture
def k8s_namespace(testbed: Testbed, request: pytest.FixtureRequest) -> Iterator[str]:
    # Namespace names: DNS labels, at most 63 characters.
    base = "".join(c if c.isalnum() else "-" for c in request.node.name.lower()).strip("-")
    name = f"t-{base[:40].strip('-')}-{uuid.uuid4().hex[:6]}"
    run_in_thread(lambda: _create_namespace(testbed.kubeconfig, name), timeout=60)
    try:
        yield name
    finally:
        try:
            run_in_thread(lambda: _delete_namespace(testbed.kubeconfig, name, NAMESPACE_DELETE_WAIT),
                          timeout=NAMESPACE_DELETE_WAIT + 30)
        except Exception as exc:  # noqa: BLE001 - cleanup must not fail the test
            print(f"warning: could not delete namespace {name}: {exc}")


@pytest.fixture(autouse=True)
def _testbed_marker(request: pytest.FixtureRequest) -> None:
    """Tests marked `testbed` get the test bed and a namespace without asking; unmarked tests
    never touch it (unless they request the fixtures themselves)."""
    if request.node.get_closest_marker("testbed") is not None:
        request.getfixturevalue("k8s_namespace")
