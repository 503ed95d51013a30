#!/usr/bin/env python3
"""The Go-built tools of the delivery: the REST bridge binary, helm, and the protoc plugins.

    python bridge/gotools.py bridge    # build (if needed) and print the bridge binary's path
    python bridge/gotools.py helm      # the same for helm
    python bridge/gotools.py plugins   # the protoc plugins' directory
    python bridge/gotools.py all       # all three (scripts/setup.d/50-go-tools.sh)

Everything is built from the Go module proxy once, into a cache outside the repo
($AIGC_GO_TOOLS, default ~/.cache/aigc-gateway/go-tools), in a directory named for
what it was built from: helm by its version, the plugins by bridge/go.sum, the
bridge by a hash of its sources. A change rebuilds; nothing else does.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

BRIDGE = Path(__file__).resolve().parent
HELM_MODULE = "helm.sh/helm/v3"
HELM_VERSION = "v3.22.0"
# The Kubernetes version helm assumes without a cluster (`helm template`, lint): its client-go's,
# stamped the way helm's own Makefile does (else it claims 1.20 and refuses kubeVersion ranges).
HELM_K8S_MAJOR, HELM_K8S_MINOR = "1", "37"
PLUGINS = ("protoc-gen-go", "protoc-gen-go-grpc", "protoc-gen-grpc-gateway", "protoc-gen-openapiv2")


def cache_dir() -> Path:
    return Path(os.environ.get("AIGC_GO_TOOLS") or Path.home() / ".cache" / "aigc-gateway" / "go-tools")


def _go_env(**extra: str) -> dict[str, str]:
    if shutil.which("go") is None:
        raise SystemExit("go is not on PATH: run scripts/setup.d/50-go-tools.sh")
    return {**os.environ, "CGO_ENABLED": "0", "GOFLAGS": "-buildvcs=false", **extra}


def _install_atomically(target: Path, build: Callable[[Path], None]) -> Path:
    """Build into a scratch directory beside ``target`` and rename it into place, so
    an interrupted build never leaves a half-written tool that looks cached."""
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        build(scratch)
        try:
            scratch.rename(target)
        except OSError:  # another process won the race: its build is as good as ours
            if not target.exists():
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def plugins() -> Path:
    """The protoc plugins pinned by the `tool` lines of bridge/go.mod."""
    key = hashlib.sha256((BRIDGE / "go.mod").read_bytes() + (BRIDGE / "go.sum").read_bytes()).hexdigest()[:12]

    def build(out: Path) -> None:
        subprocess.run(["go", "install", "tool"], cwd=BRIDGE, check=True,
                       env=_go_env(GOBIN=str(out / "bin"), GOFLAGS="-buildvcs=false -mod=readonly"))

    return _install_atomically(cache_dir() / f"protoc-plugins-{key}", build) / "bin"


def helm() -> Path:
    """helm, built from its Go module (no release download)."""
    stamps = [f"{HELM_MODULE}/internal/version.version={HELM_VERSION}"] + [
        f"{HELM_MODULE}/pkg/{pkg}.k8sVersion{part}={value}"
        for pkg in ("chartutil", "lint/rules")
        for part, value in (("Major", HELM_K8S_MAJOR), ("Minor", HELM_K8S_MINOR))]
    ldflags = " ".join(["-s", "-w", *(f"-X {s}" for s in stamps)])

    def build(out: Path) -> None:
        subprocess.run(["go", "install", "-ldflags", ldflags, f"{HELM_MODULE}/cmd/helm@{HELM_VERSION}"],
                       cwd=out, check=True, env=_go_env(GOBIN=str(out / "bin")))

    key = hashlib.sha256(ldflags.encode()).hexdigest()[:8]
    return _install_atomically(cache_dir() / f"helm-{HELM_VERSION}-{key}", build) / "bin" / "helm"


def bridge_sources_hash() -> str:
    digest = hashlib.sha256()
    files = [BRIDGE / "go.mod", BRIDGE / "go.sum", *sorted(BRIDGE.glob("*.go")),
             *sorted((BRIDGE / "gen").rglob("*.go"))]
    for path in files:
        if path.name.endswith("_test.go"):
            continue
        digest.update(str(path.relative_to(BRIDGE)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def bridge() -> Path:
    """The bridge binary of the current sources."""
    def build(out: Path) -> None:
        subprocess.run(["go", "build", "-trimpath", "-ldflags", "-s -w", "-o", str(out / "aigc-bridge"), "."],
                       cwd=BRIDGE, check=True, env=_go_env(GOFLAGS="-buildvcs=false -mod=readonly"))

    return _install_atomically(cache_dir() / f"bridge-{bridge_sources_hash()}", build) / "aigc-bridge"


def main(argv: list[str]) -> int:
    what = argv[0] if argv else "all"
    tools = {"bridge": bridge, "helm": helm, "plugins": plugins}
    if what == "all":
        for fn in tools.values():
            print(fn())
        return 0
    if what not in tools:
        print(__doc__, file=sys.stderr)
        return 2
    print(tools[what]())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
