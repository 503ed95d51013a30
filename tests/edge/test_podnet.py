"""The pods' backends of the test bed (testbed/aigc_testbed/podnet.py) without a cluster: EndpointSlices
in, one listener per (pod IP, port), answers and log lines naming the pod that owns the address."""
from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "testbed"))

from aigc_testbed.podnet import Backends  # noqa: E402


def endpoint_slice(uid: str, ip: str, pod: str, port: int) -> dict:
    return {"metadata": {"uid": uid}, "ports": [{"name": "", "port": port, "protocol": "TCP"}],
            "endpoints": [{"addresses": [ip], "targetRef": {"kind": "Pod", "namespace": "ns", "name": pod}}]}


async def test_answers_as_the_pod_that_owns_the_address_and_stops_with_it(tmp_path: Path) -> None:
    from tests.plugins.auth_stack import free_port

    port = free_port()
    log = tmp_path / "requests.log"
    backends = Backends(str(log), "127.0.0.0/8")
    outside = endpoint_slice("u2", "10.1.2.3", "elsewhere", port)  # not on this machine: ignored
    await backends.replace_all([endpoint_slice("u1", "127.0.0.1", "sd-0", port), outside])
    assert set(backends.servers) == {("127.0.0.1", port)}

    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /a?b HTTP/1.1\r\nHost: h\r\nX-A: 1\r\nX-A: 2\r\n\r\nGET /c HTTP/1.1\r\nHost: h\r\n"
                 b"Connection: close\r\n\r\n")
    data = await reader.read()
    writer.close()
    bodies = [json.loads(part.split(b"\r\n\r\n", 1)[1]) for part in data.split(b"HTTP/1.1 200 OK")[1:]]
    assert [(b["pod"], b["path"]) for b in bodies] == [("sd-0", "/a?b"), ("sd-0", "/c")]
    assert bodies[0]["headers"] == [["Host", "h"], ["X-A", "1"], ["X-A", "2"]]  # every header, in order
    assert [json.loads(line)["path"] for line in log.read_text().splitlines()] == ["/a?b", "/c"]

    # Another pod takes the address over (kwok reuses addresses): answers name the new pod.
    await backends.apply("MODIFIED", endpoint_slice("u1", "127.0.0.1", "sd-7", port))
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.0\r\n\r\n")
    assert json.loads((await reader.read()).split(b"\r\n\r\n", 1)[1])["pod"] == "sd-7"
    writer.close()

    await backends.apply("DELETED", endpoint_slice("u1", "127.0.0.1", "sd-7", port))
    assert backends.servers == {}
    try:
        await asyncio.open_connection("127.0.0.1", port)
        raise AssertionError("the address still answers after its pod went")
    except ConnectionRefusedError:
        pass
