"""The pods' backends: one process that answers on every pod IP and port a Service routes to.

kwok only pretends to run containers. `testbed up` gives each fake node a `spec.podCIDR` inside a
range it routes to `lo` as local (kwok assigns pod IPs from the node's podCIDR), so every pod IP is
an address this machine can bind (see edge.py). This process watches the EndpointSlices (what
ingress-nginx and Traefik dial: the ready pod IPs and target ports of a Service) and keeps one
listening socket per (pod IP, port). Each request is answered with JSON naming the pod that owns
that address *at that moment* (its namespace and name, from the EndpointSlice's targetRef), the
method, the path and every header received in order (duplicates kept), and one JSON line per request
is appended to the request log, so a test can prove which pod a proxy reached and which it never did.

Standard library only (asyncio); run by `testbed up` as `aigc-podnet` (its argv[0], which is how
`down` recognises the process):

    python3 podnet.py --server URL --ca FILE --cert FILE --key FILE --log FILE --network CIDR --ready-port N
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import signal
import ssl
import sys
import threading
import time
import urllib.error
import urllib.request

SLICES = "/apis/discovery.k8s.io/v1/endpointslices"
MAX_HEAD = 64 * 1024


class Backends:
    """(ip, port) -> (namespace, pod) from the EndpointSlices, and the sockets serving them."""

    def __init__(self, log_path: str, network: str):
        self.network = ipaddress.ip_network(network)
        self.slices: dict[str, list[tuple[str, int, str, str]]] = {}  # slice uid -> endpoints
        self.owner: dict[tuple[str, int], tuple[str, str]] = {}
        self.servers: dict[tuple[str, int], asyncio.AbstractServer] = {}
        self.log = open(log_path, "a", buffering=1)
        self.listed = asyncio.Event()  # set once the first listing is served

    # -- the EndpointSlice state -------------------------------------------------------------
    def endpoints_of(self, obj: dict) -> list[tuple[str, int, str, str]]:
        found = []
        ports = [p.get("port") for p in obj.get("ports") or [] if (p.get("protocol") or "TCP") == "TCP"]
        for ep in obj.get("endpoints") or []:
            ref = ep.get("targetRef") or {}
            if ref.get("kind") != "Pod":
                continue
            for address in ep.get("addresses") or []:
                try:
                    if ipaddress.ip_address(address) not in self.network:
                        continue
                except ValueError:
                    continue
                found += [(address, port, ref.get("namespace", ""), ref.get("name", ""))
                          for port in ports if port]
        return found

    async def apply(self, kind: str, obj: dict) -> None:
        uid = obj["metadata"]["uid"]
        if kind == "DELETED":
            self.slices.pop(uid, None)
        else:
            self.slices[uid] = self.endpoints_of(obj)
        await self.reconcile()

    async def replace_all(self, items: list[dict]) -> None:
        self.slices = {o["metadata"]["uid"]: self.endpoints_of(o) for o in items}
        await self.reconcile()
        self.listed.set()

    async def reconcile(self) -> None:
        owner = {(ip, port): (ns, pod) for eps in self.slices.values() for ip, port, ns, pod in eps}
        self.owner = owner
        for key in [k for k in self.servers if k not in owner]:
            self.servers.pop(key).close()  # the pod is gone: its address refuses connections again
        for key in owner:
            if key not in self.servers:
                try:
                    self.servers[key] = await asyncio.start_server(
                        lambda r, w, k=key: self.serve(k, r, w), key[0], key[1], reuse_address=True)
                except OSError as exc:
                    print(f"podnet: cannot listen on {key[0]}:{key[1]}: {exc}", file=sys.stderr, flush=True)

    # -- HTTP ------------------------------------------------------------------------------------
    async def serve(self, key: tuple[str, int], reader: asyncio.StreamReader,
                    writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    return
                lines = head[:-4].decode("latin-1").split("\r\n")
                parts = lines[0].split(" ")
                if len(parts) != 3:
                    return
                method, target, version = parts
                headers = [line.split(":", 1) for line in lines[1:] if ":" in line]
                headers = [[k.strip(), v.strip()] for k, v in headers]
                lower = {k.lower(): v for k, v in headers}
                length = int(lower.get("content-length") or 0)
                if length:
                    await reader.readexactly(length)
                ns, pod = self.owner.get(key, ("", ""))
                record = {"time": round(time.time(), 6), "ip": key[0], "port": key[1], "namespace": ns,
                          "pod": pod, "method": method, "path": target, "version": version,
                          "headers": headers}
                self.log.write(json.dumps(record) + "\n")
                body = json.dumps(record).encode()
                close = (version == "HTTP/1.0" and lower.get("connection", "").lower() != "keep-alive") \
                    or lower.get("connection", "").lower() == "close" or "transfer-encoding" in lower
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             + f"Content-Length: {len(body)}\r\n".encode()
                             + (b"Connection: close\r\n" if close else b"") + b"\r\n" + body)
                await writer.drain()
                if close:
                    return
        except ConnectionError:
            return
        finally:
            writer.close()


class Watch:
    """List, then watch, the EndpointSlices through the apiserver (a thread per blocking stream)."""

    def __init__(self, server: str, ctx: ssl.SSLContext, loop: asyncio.AbstractEventLoop, backends: Backends):
        self.server, self.ctx, self.loop, self.backends = server, ctx, loop, backends

    def get(self, path: str, timeout: float):
        return urllib.request.urlopen(self.server + path, context=self.ctx, timeout=timeout)

    def run(self) -> None:
        while True:
            try:
                with self.get(SLICES, 30) as resp:
                    listing = json.load(resp)
                asyncio.run_coroutine_threadsafe(self.backends.replace_all(listing["items"]), self.loop).result()
                version = listing["metadata"]["resourceVersion"]
                path = f"{SLICES}?watch=1&allowWatchBookmarks=true&resourceVersion={version}&timeoutSeconds=600"
                with self.get(path, 660) as stream:
                    for line in stream:
                        event = json.loads(line)
                        if event["type"] == "ERROR":
                            break  # e.g. 410 Gone: list again
                        if event["type"] == "BOOKMARK":
                            continue
                        asyncio.run_coroutine_threadsafe(
                            self.backends.apply(event["type"], event["object"]), self.loop).result()
            except (OSError, urllib.error.URLError, ValueError, KeyError) as exc:
                print(f"podnet: watch interrupted ({exc}); listing again", file=sys.stderr, flush=True)
                time.sleep(1)


async def main(args: argparse.Namespace) -> None:
    ctx = ssl.create_default_context(cafile=args.ca)
    ctx.load_cert_chain(args.cert, args.key)
    backends = Backends(args.log, args.network)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    threading.Thread(target=Watch(args.server, ctx, loop, backends).run, daemon=True).start()
    # Readiness for `testbed up`: a plain TCP port that answers once the first listing is applied.
    await backends.listed.wait()
    ready = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", args.ready_port)
    print(f"podnet: ready port {args.ready_port}", flush=True)
    await stop.wait()
    ready.close()
    for server in backends.servers.values():
        server.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for name in ("server", "ca", "cert", "key", "log", "network"):
        parser.add_argument(f"--{name}", required=True)
    parser.add_argument("--ready-port", type=int, required=True)
    asyncio.run(main(parser.parse_args()))
