"""A real PostgreSQL restart and a real kube-apiserver restart under load (issue 18; bench/chaos.py's
`pg-restart` and `kube-restart`, bench/chaos_restart.py).

The instance, auth and usersync services run in this process on a PostgreSQL server of the test's own (never the
shared one). `pg-restart` crashes it with `pg_ctl stop -m immediate` and starts it again on the same port 8 s
later; `kube-restart` kills the test bed's kube-apiserver and starts it again with the same command line 4 s
later (`testbed/testbed restart kube-apiserver`, which returns once the bed is healthy: the bed is shared, so the
outage is kept short and the test does not end before it is over). Meanwhile users install, pause, resume and
uninstall, and the auth check is asked about their instances.

After each restart, without restarting any service: nothing failed beyond the documented client retry,
CheckConsistency is clean, the Logto mirror equals PostgreSQL's owners, no non-owner was allowed and nobody was
allowed while the auth owner map was unknown; and after both, an instance installed now gets a Running pod (the
OKG and Kubernetes controllers are reconnected to the new apiserver on their own)."""
from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.doubles.logto import LogtoDouble
from tests.plugins.kube import Game, api_client, wait_for
from tests.plugins.testbed import Testbed

from ..instance.conftest import create_template, game  # noqa: F401 - the fixture
from .held import assert_held
from .test_links import SEED, _bench

pytestmark = [pytest.mark.testbed, pytest.mark.restarts_testbed]


@pytest.fixture
def private_postgres() -> Iterator[Any]:
    chaos = _bench()
    postgres = chaos.PrivatePostgres()
    postgres.start()
    try:
        yield postgres
    finally:
        postgres.stop()


async def _running(game: Game, template: str, ident: int) -> bool:
    pod = (await game.pods(template)).get(ident)
    return pod is not None and pod.status.phase == "Running"


async def test_postgres_and_apiserver_restarts(tmp_path: Path, testbed: Testbed, game: Game,  # noqa: F811
                                                private_postgres: Any, issuer: Any, logto: LogtoDouble) -> None:
    if testbed.state_dir is None:
        pytest.skip("the apiserver restart needs this repository's test bed, not an external cluster")
    from aigc_gateway.api.v1 import instance_pb2

    chaos = _bench()
    began = time.monotonic()
    url = await private_postgres.create_database(f"aigc_restart_{uuid.uuid4().hex[:6]}")
    templates = tuple([await create_template(game, testbed, name=n) for n in ("chaos-a", "chaos-b")])
    bed = chaos.ChaosBed(namespace=game.namespace, database_url=url, kubeconfig=str(testbed.kubeconfig),
                         issuer=issuer, logto=logto, templates=templates, domain=testbed.domain, folder=tmp_path,
                         users=3, seed=SEED, postgres=private_postgres)
    steps = [chaos.Step("pg", "pg-restart", 8.0), chaos.Step("kube", "kube-restart", 4.0)]
    await bed.start()
    try:
        await bed.prepare()
        for step in steps:
            await bed.run_step(step)
        # Installed after both restarts: a pod Running means kruise-game, kruise, the scheduler and kwok all
        # watch the new apiserver (through a new client: the fixture's connections died with the old one).
        reply = await bed.admin_instances.CreateInstance(instance_pb2.CreateInstanceRequest(
            parent=f"namespaces/{game.namespace}/templates/{templates[1]}", request_id=uuid.uuid4().hex),
            metadata=(("authorization", f"Bearer {bed.bearer('chaos-probe')}"),), timeout=60)
        async with api_client(testbed.kubeconfig) as api:
            after = Game(api, game.namespace)
            await wait_for(lambda: _running(after, templates[1], reply.id), 120, what="the new install's pod Running")
    finally:
        await bed.close()
    chaos.print_table(steps, SEED)
    print(f"restarts test: {time.monotonic() - began:.0f} s")
    for step in steps:
        assert_held(step)
    pg = steps[0]
    # The database was gone for longer than the auth service's 5 s bound: its owners were refused meanwhile.
    assert pg.refused_unknown > 0
    assert any("crash recovery" in n for n in pg.notes), pg.notes
