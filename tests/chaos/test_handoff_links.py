"""Faults on the links between the services (issue 18; bench/chaos.py's `grpc-template-*` and
`grpc-usersync-instance` faults, bench/chaos_handoff.py and bench/chaos_userdeleted.py): the template service's
forced DeleteTemplate hands off to UserSyncService.CleanupTemplate and InstanceService.PurgeInstances over gRPC,
usersync acts on Logto's User.Deleted through InstanceService.PauseInstance, and each of those links goes through
toxiproxy.

Per fault, under the users' load: a template with two owned instances, the link broken, the admin's forced
DeleteTemplate sent, the link kept broken until the template's Kubernetes objects are gone and 8 s after (so the
hand-off meets the fault). A link down for all of the hand-off makes the delete answer OK with CLEANUP_INCOMPLETE
(the contract: the Kubernetes side is gone, the hand-off did not complete), and the same forced delete sent again
once the link is back completes it. Either way nothing is left half-done: no ownership row of the template, no
Logto key of it for any owner, CheckConsistency clean, and the auth check's invariants as in test_links.py.
User.Deleted sent while usersync's link to the instance service is down is answered 503 (nothing kept) and Logto's
retry, once the link is back, is acted on: the user's instances end paused and orphaned."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.doubles.logto import LogtoDouble
from tests.plugins.kube import Game
from tests.plugins.testbed import Testbed

from ..instance.conftest import create_template, game  # noqa: F401 - the fixture
from .held import assert_held
from .test_links import SEED, _bench

pytestmark = pytest.mark.testbed

FAULTS = "grpc-template-instance:down,grpc-template-usersync:reset,grpc-usersync-instance:down"


async def test_handoff_links(tmp_path: Path, testbed: Testbed, game: Game, database_url: str,  # noqa: F811
                             issuer: Any, logto: LogtoDouble) -> None:
    chaos = _bench()
    began = time.monotonic()
    templates = tuple([await create_template(game, testbed, name=n) for n in ("chaos-a", "chaos-b")])
    bed = chaos.ChaosBed(namespace=game.namespace, database_url=database_url, kubeconfig=str(testbed.kubeconfig),
                         issuer=issuer, logto=logto, templates=templates, domain=testbed.domain, folder=tmp_path,
                         users=3, seed=SEED)
    steps = await chaos.run(bed, chaos.schedule(SEED, 8.0, FAULTS))
    chaos.print_table(steps, SEED)
    print(f"hand-off links test: {time.monotonic() - began:.0f} s")
    assert [s.name for s in steps] == FAULTS.split(",")
    for step in steps:
        assert_held(step, some_ok=False)
    down = steps[0]
    # Down for the whole hand-off: PurgeInstances could not be called, the answer said so, the resumption finished.
    assert any("CLEANUP_INCOMPLETE: InstanceService.PurgeInstances" in n for n in down.notes), down.notes
    assert any(n.startswith("DeleteTemplate resumed, then complete") for n in down.notes), down.notes
    leaver = steps[2]
    assert any(n.startswith("User.Deleted:") and "503 ACTION_FAILED" in n and n.endswith("200")
               for n in leaver.notes), leaver.notes
