"""The hot reads at the 10,000-instance scale use indexes (issue 18): bench/scale.py's rows (10,000 instances of
50,000 users over 50 templates, 100,000 audit events), ANALYZEd, and PostgreSQL's plan of each statement the
services issue for them. Not here: the admin ListInstances `count(*)` (total_size), which reads every visible row
by its nature (a sequential scan of the table, 0.15 ms p50 at 10,000 rows in bench/scale.py)."""
from __future__ import annotations

import sys
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import scale  # noqa: E402

AUDIT = {
    "ListAuditEvents actor": ("SELECT * FROM audit_events WHERE actor = $1 ORDER BY id DESC LIMIT 101", ["user-31"],
                              "ix_audit_events_actor_id"),
    "ListAuditEvents instance": ("SELECT * FROM audit_events WHERE resource = $1 ORDER BY id DESC LIMIT 101",
                                 ["namespaces/scale/templates/tpl-3/instances/3"], "ix_audit_events_resource_id"),
    "ListAuditEvents action+day": (
        "SELECT * FROM audit_events WHERE action = $1 AND time >= now() - interval '8 days' "
        "AND time < now() - interval '7 days' ORDER BY id DESC LIMIT 101", ["InstanceService.PauseInstance"],
        "ix_audit_events_action_time"),
}
pytestmark = pytest.mark.asyncio(loop_scope="module")  # one seeded database for every plan

INSTANCES = {"ListInstances own": "ix_instances_owner", "ListInstances own count": "ix_instances_owner",
             "ListInstances admin p50": "pk_instances", "GetInstance": "pk_instances"}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def seeded(postgres_server_url: str, postgres_template: str):  # type: ignore[no-untyped-def]
    from ..plugins.postgres import _clone, _drop

    url = await _clone(postgres_server_url, postgres_template)
    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    await scale.seed(conn, 10_000, 50_000, 50, 100_000)
    yield conn
    await conn.close()
    await _drop(postgres_server_url, url)


@pytest.mark.parametrize("label", list(INSTANCES))
async def test_instance_reads_use_their_index(seeded, label: str) -> None:
    sql, args = scale.instance_queries(50_000, 200)[label]
    plan = await scale.explain(seeded, sql, args)
    assert f"using {INSTANCES[label]} on instances" in plan, plan
    assert "Seq Scan" not in plan, plan


@pytest.mark.parametrize("label", list(AUDIT))
async def test_audit_reads_use_their_index(seeded, label: str) -> None:
    sql, args, index = AUDIT[label]
    plan = await scale.explain(seeded, sql, args)
    assert index in plan, plan  # "Index Scan using ix_..." or "Bitmap Index Scan on ix_..."
    assert "Seq Scan" not in plan, plan
