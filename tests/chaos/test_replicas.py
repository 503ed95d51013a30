"""bench/replicas.py in a bounded form: two `serve` processes of template, instance, auth and usersync and two REST
bridges, REST clients alternating between the bridges, the bridges and services spreading gRPC calls over both
processes of each service with round_robin, one of the ten killed with SIGKILL every 4-10 s and started again, for
60 s of mixed load (installs, pauses, resumes, uninstalls and template updates through the bridges, auth checks). Nothing fails beyond the documented client retry (same request_id, 60 s), no auth check allows a user
who owns nothing, CheckConsistency is clean and the Logto mirror equals PostgreSQL's owners. Figures printed."""
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

pytestmark = pytest.mark.testbed

SEED = int(os.environ.get("AIGC_CHAOS_SEED", "18"))


def _bench() -> Any:
    sys.path.insert(0, str(REPO / "bench"))
    spec = importlib.util.spec_from_file_location("replicas", REPO / "bench" / "replicas.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


async def test_kill_any_replica_during_mixed_load(tmp_path: Path, testbed: Testbed, game: Game, database_url: str,
                                                 issuer: Any, logto: LogtoDouble) -> None:
    replicas = _bench()
    templates = tuple([await create_template(game, testbed, name=n) for n in ("chaos-a", "chaos-b")])
    bed = replicas.ReplicaBed(namespace=game.namespace, database_url=database_url,
                              kubeconfig=str(testbed.kubeconfig), issuer=issuer, logto=logto, templates=templates,
                              domain=testbed.domain, folder=tmp_path, users=4, seed=SEED)
    step = await replicas.run(bed, 60)
    replicas.print_report(step, bed.kills, SEED, bed)
    assert bed.kills >= 2  # one down at a time: on a loaded machine a restart may take half a minute
    assert step.nobody_allowed == 0
    assert step.failed == 0, step.failures
    assert step.recovery == step.recovery, "not healthy 120 s after the last restart"
    assert step.consistent, step.violations
    assert step.mirror_lost == []
    assert step.ok > 0 and step.owner_allowed > 0
    assert bed.per_call["UpdateTemplate"][1] > 0 and bed.per_call["CreateInstance"][1] > 0
