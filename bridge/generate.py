#!/usr/bin/env python3
"""Generate the REST bridge's Go code and the OpenAPI document from protos/.

    python bridge/generate.py           # regenerate bridge/gen/, docs/openapi/ and the dashboard's API types
    python bridge/generate.py --check   # exit 1 when either committed tree is stale
    python bridge/generate.py --tools   # only build the protoc plugins; print their directory

protoc is the one bundled with grpcio-tools (pinned in the dev extra, as for the
Python code); the four plugins are pinned as `tool` lines in bridge/go.mod and
built once into a cache outside the repo by bridge/gotools.py.
"""
from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

BRIDGE = Path(__file__).resolve().parent
ROOT = BRIDGE.parent
PROTO_ROOT = ROOT / "protos"
PROTO_PKG = "aigc/gateway/v1"
GO_MODULE = "github.com/aigc-gateway/aigc-gateway/bridge"
GEN = BRIDGE / "gen"
OPENAPI = ROOT / "docs" / "openapi"
OPENAPI_NAME = "aigc-gateway"  # -> docs/openapi/aigc-gateway.swagger.json
PLUGINS = ("protoc-gen-go", "protoc-gen-go-grpc", "protoc-gen-grpc-gateway", "protoc-gen-openapiv2")

# protoc-gen-openapiv2: one merged document; `simple` names keep schema names short
# and stable (Status, Template…); resource names in paths are expanded into one
# parameter per segment (`/v1/namespaces/{namespace}/templates/{template}`), the
# same URLs the bridge serves, so clients never have to escape a slash; document-wide
# options (title, security, error responses: google.rpc.Status) are in bridge/openapi.yaml.
OPENAPI_OPTS = ",".join([
    "allow_merge=true",
    f"merge_file_name={OPENAPI_NAME}",
    "openapi_naming_strategy=simple",
    "expand_slashed_path_patterns=true",
    f"openapi_configuration={BRIDGE / 'openapi.yaml'}",
])


def ensure_plugins() -> Path:
    """The pinned plugins' directory (built on first use; see bridge/gotools.py)."""
    sys.path.insert(0, str(BRIDGE))
    import gotools

    return gotools.plugins()


def _include_dirs() -> list[str]:
    import grpc_tools

    dirs = [str(PROTO_ROOT), str(Path(grpc_tools.__file__).parent / "_proto")]
    for entry in sys.path:  # googleapis-common-protos ships google/api/*.proto beside its modules
        if (Path(entry) / "google" / "api" / "annotations.proto").exists():
            return [*dirs, entry]
    raise SystemExit("google/api/annotations.proto not found: pip install googleapis-common-protos")


def generate(go_out: Path, openapi_out: Path) -> None:
    """Write the Go packages under ``go_out`` (the bridge/gen layout) and the document into ``openapi_out``."""
    from grpc_tools import protoc

    bin_dir = ensure_plugins()
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in (PROTO_ROOT / PROTO_PKG).glob("*.proto"))
    with tempfile.TemporaryDirectory() as scratch:
        module_opt = f"module={GO_MODULE}"
        args = ["protoc", *(f"-I{d}" for d in _include_dirs()),
                *(f"--plugin={p}={bin_dir / p}" for p in PLUGINS),
                f"--go_out={scratch}", f"--go_opt={module_opt}",
                f"--go-grpc_out={scratch}", f"--go-grpc_opt={module_opt}",
                f"--grpc-gateway_out={scratch}", f"--grpc-gateway_opt={module_opt}",
                f"--openapiv2_out={scratch}", f"--openapiv2_opt={OPENAPI_OPTS}",
                *protos]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        produced = Path(scratch) / "gen"
        if not produced.is_dir():
            raise SystemExit(f"go_package does not point under {GO_MODULE}/gen: fix the option in the protos")
        shutil.copytree(produced, go_out, dirs_exist_ok=True)
        openapi_out.mkdir(parents=True, exist_ok=True)
        shutil.copy2(Path(scratch) / f"{OPENAPI_NAME}.swagger.json", openapi_out / f"{OPENAPI_NAME}.swagger.json")


def _stale(fresh: Path, committed: Path) -> list[str]:
    if not committed.exists():
        return [f"{committed} (missing)"]
    stale: list[str] = []

    def walk(cmp: filecmp.dircmp, prefix: str) -> None:
        stale.extend(prefix + n for n in cmp.left_only + cmp.right_only + cmp.diff_files + cmp.funny_files)
        for name, sub in cmp.subdirs.items():
            walk(sub, f"{prefix}{name}/")

    walk(filecmp.dircmp(fresh, committed, ignore=[]), "")
    return stale


def check() -> list[str]:
    """Regenerate into a scratch tree; return the committed files that differ (empty: up to date)."""
    with tempfile.TemporaryDirectory() as tmp:
        go_out, openapi_out = Path(tmp) / "gen", Path(tmp) / "openapi"
        generate(go_out, openapi_out)
        return ([f"bridge/gen/{n}" for n in _stale(go_out, GEN)]
                + [f"docs/openapi/{n}" for n in _stale(openapi_out, OPENAPI)])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if bridge/gen or docs/openapi is out of date")
    parser.add_argument("--tools", action="store_true", help="build the protoc plugins and print their directory")
    opts = parser.parse_args()
    if opts.tools:
        print(ensure_plugins())
        return 0
    if opts.check:
        stale = check()
        if stale:
            print("generated bridge code or OpenAPI is out of date with protos/ (run python bridge/generate.py):",
                  *stale, sep="\n  ")
            return 1
        print("bridge code and OpenAPI are up to date")
        return 0
    if GEN.exists():
        shutil.rmtree(GEN)
    generate(GEN, OPENAPI)
    print(f"generated {GEN.relative_to(ROOT)}/ and {OPENAPI.relative_to(ROOT)}/{OPENAPI_NAME}.swagger.json")
    dashboard_types()
    return 0


def dashboard_types() -> None:
    """The dashboard's TypeScript types follow the document (their drift check: tests/dashboard/test_build.py)."""
    dashboard = ROOT / "dashboard"
    if not (dashboard / "node_modules" / ".bin" / "openapi-typescript").exists():
        print("dashboard/ is not installed: run scripts/setup.d/60-dashboard.sh, then `npm run gen` in dashboard/")
        return
    import subprocess

    subprocess.run(["npm", "run", "--silent", "gen"], cwd=dashboard, check=True, stdout=subprocess.DEVNULL)
    print("generated dashboard/src/api/schema.d.ts")


if __name__ == "__main__":
    sys.exit(main())
