"""An acceptance corpus of raw requests through both real proxies (the nginx stand-in rendered from the
Ingress objects, and the test bed's Traefik), against alice's and bob's instances of one template.

`AIGC_EDGE_CORPUS=<file.json>` names the corpus (skipped without it; tests/edge/corpus-example.json shows
the format): a list of `{"name", "request", "expect": {"nginx": status, "traefik": status}, "pod"}` where
`request` is the raw HTTP/1.x request (sent byte for byte; it should end its connection: HTTP/1.0 or
`Connection: close`) with `{alice_host}`, `{bob_host}`, `{port}`, `{alice_cookie}`, `{bob_cookie}`
filled in, and `pod` is the pod that must receive it ("alice", "bob") or null when no pod may. Every
case must get its status, and the pods' log must show exactly that one request or none."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from .conftest import raw
from .scene import COOKIE, install
from .test_owner_only import PROXIES, scene  # noqa: F401 - the fixture

CORPUS = os.environ.get("AIGC_EDGE_CORPUS", "")
pytestmark = [
    pytest.mark.testbed,
    pytest.mark.skipif(not CORPUS, reason="AIGC_EDGE_CORPUS names no corpus"),
]


@pytest.mark.parametrize("scene", PROXIES, indirect=True)
async def test_corpus(scene) -> None:
    cases = json.loads(Path(CORPUS).read_text())
    users = {"alice": await install(scene, "alice"), "bob": await install(scene, "bob")}
    values = {"alice_host": users["alice"].host, "bob_host": users["bob"].host, "port": scene.port,
              "alice_cookie": f"{COOKIE}={scene.cookies['alice']}", "bob_cookie": f"{COOKIE}={scene.cookies['bob']}"}
    got, want = [], []
    for case in cases:
        before = len(scene.pods.records())
        text = case["request"]
        for key, value in values.items():
            text = text.replace("{" + key + "}", str(value))
        reply = await raw(scene.port, text.encode("utf-8"))
        reached = [r["pod"] for r in scene.pods.records()[before:]]
        allowed = [users[case["pod"]].pod] if case.get("pod") else []
        got.append((case["name"], reply.status, reached))
        want.append((case["name"], case["expect"][scene.proxy], allowed))
    assert got == want
