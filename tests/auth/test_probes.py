"""The HTTP workers' runtime probe (services/auth/probes.py): what bench/auth_check.py attributes a tail with."""
from __future__ import annotations

import asyncio
import gc
import time

from aigc_gateway.services.auth.probes import LAG_INTERVAL, RuntimeProbe


async def test_a_full_collection_and_a_held_loop_are_counted() -> None:
    probe = RuntimeProbe()
    probe.start()
    try:
        await asyncio.sleep(LAG_INTERVAL / 2)  # the probe's timer is armed
        before = probe.snapshot()
        gc.collect()
        held = time.perf_counter()
        # A callback holding the loop past the timer's due time (half an interval away) and 60 ms beyond.
        while time.perf_counter() - held < LAG_INTERVAL / 2 + 0.06:
            pass
        await asyncio.sleep(LAG_INTERVAL * 2)  # the late timer fires and is measured
        after = probe.snapshot()
    finally:
        probe.stop()
    assert after["gc_count"][2] == before["gc_count"][2] + 1
    assert after["gc_seconds"][2] > before["gc_seconds"][2]
    assert after["lag_max_ms"] >= 40  # held 60 ms past its due time
    assert sum(after["lag"][5:]) > sum(before["lag"][5:])  # a bucket above 10 ms
    late = (after["lag_busy_s"] + after["lag_off_cpu_s"]) - (before["lag_busy_s"] + before["lag_off_cpu_s"])
    assert late >= 0.04
    assert after["cpu_s"] >= before["cpu_s"] + 0.05
    assert probe._gc not in gc.callbacks  # stop() unhooks it
