"""The kill storm of bench/kill_storm.py in a bounded form (issue 20): two `serve instance` processes, one
killed with SIGKILL every 5-20 s, users retrying with the same request ids; every operation is answered,
no answer is another user's or contradicts the first attempt (INSTANCE_EXISTS for a retried install,
INSTANCE_NOT_FOUND for a retried delete), and CheckConsistency finds nothing. How many needed more than
the 30 s client budget, and the kill-to-answer p50/p99, depend on the machine: printed, not judged."""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

from ..plugins.kube import Game
from ..plugins.testbed import Testbed
from .conftest import REPO, create_template

pytestmark = pytest.mark.testbed

SEED = int(os.environ.get("AIGC_STORM_SEED", "20"))


def _bench():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("kill_storm", REPO / "bench" / "kill_storm.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


async def test_kill_storm_for_45_seconds(tmp_path: Path, testbed: Testbed, game: Game, database_url: str) -> None:
    bench = _bench()
    templates = tuple([await create_template(game, testbed, name=n) for n in ("storm-a", "storm-b", "storm-c")])
    report = await bench.storm(game.namespace, database_url, str(testbed.kubeconfig), tmp_path, seconds=45,
                               users=6, seed=SEED, lease=4.0, templates=templates)
    report.print(45, 6, SEED, 4.0)
    assert report.unanswered == 0
    assert report.wrong == []
    assert report.consistent, report.violations
    assert report.kills >= 2 and report.ok > 0
