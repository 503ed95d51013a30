"""Faults on the links under load, bounded (bench/chaos.py's schedule, shorter): each link of the instance, auth
and usersync services through toxiproxy, one fault at a time, while users install, pause, resume and uninstall
and the auth check is asked about their instances by their owners and by a user who owns nothing.

After every fault, without restarting anything: the services answer again (recovery time printed), nothing failed
beyond the documented client retry (same request_id, the fault's length + 30 s), CheckConsistency is clean, the
Logto mirror equals PostgreSQL's owners, and the auth check never allowed a non-owner nor, while its owner map
was unknown (the database out of its reach), anyone. The faults are 8 s here (longer than the auth service's
5 s staleness bound, so that failing closed is exercised); bench/chaos.py runs them for 30 s.

The real restarts of PostgreSQL and the apiserver are in test_restarts.py, the links between the services in
test_handoff_links.py."""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.doubles.logto import LogtoDouble
from tests.plugins.kube import Game
from tests.plugins.testbed import Testbed

from ..instance.conftest import REPO, create_template, game  # noqa: F401 - the fixture
from .held import assert_held

pytestmark = pytest.mark.testbed

SEED = int(os.environ.get("AIGC_CHAOS_SEED", "18"))
SECONDS = 8.0


def _bench() -> Any:
    spec = importlib.util.spec_from_file_location("chaos", REPO / "bench" / "chaos.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


GROUPS = {
    "postgres": "pg-auth:down,pg-instance:timeout,pg-usersync:reset,pg-instance:latency",
    "apiserver": "kube:down,kube:timeout,kube:latency",
    "logto-and-grpc": "logto:down,logto:bandwidth,grpc-instance:reset,grpc-instance:down",
}


@pytest.mark.parametrize("group", list(GROUPS))
async def test_faults_on_links(group: str, tmp_path: Path, testbed: Testbed, game: Game, database_url: str,
                               issuer: Any, logto: LogtoDouble) -> None:
    chaos = _bench()
    templates = tuple([await create_template(game, testbed, name=n) for n in ("chaos-a", "chaos-b")])
    bed = chaos.ChaosBed(namespace=game.namespace, database_url=database_url, kubeconfig=str(testbed.kubeconfig),
                         issuer=issuer, logto=logto, templates=templates, domain=testbed.domain, folder=tmp_path,
                         users=3, seed=SEED)
    steps = await chaos.run(bed, chaos.schedule(SEED, SECONDS, GROUPS[group]))
    chaos.print_table(steps, SEED)
    assert [s.name for s in steps] == GROUPS[group].split(",")
    for step in steps:
        assert_held(step)
    down = next((s for s in steps if s.name == "pg-auth:down"), None)
    if down is not None:  # the auth service lost its database for longer than its bound: it refused owners
        assert down.refused_unknown > 0
