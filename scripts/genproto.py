#!/usr/bin/env python3
"""Generate the Python code for protos/ into src/aigc_gateway/api/v1/.

    python scripts/genproto.py          # regenerate in place
    python scripts/genproto.py --check  # exit 1 when the committed code is stale

protoc names Python modules after the .proto paths (`aigc.gateway.v1`), which
would install a generic top-level `aigc` package. We generate into a scratch
tree and rewrite the project's own imports to relative ones so the code lives
under `aigc_gateway.api.v1`. (protoletariat does this rewrite, but it pins
protobuf<6 and cannot install beside the runtime the generated code needs.)
"""
from __future__ import annotations

import argparse
import filecmp
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
PROTO_PKG = "aigc/gateway/v1"
OUT = ROOT / "src" / "aigc_gateway" / "api" / "v1"

# Vendored third-party protos (Envoy's ext_authz and its imports; see protos/third_party/THIRD_PARTY.md, which
# says why not the xds-protos package), kept apart from the project's own contracts and generated flat into one
# package: envoy/service/auth/v3/external_auth.proto -> envoy_service_auth_v3_external_auth_pb2.
THIRD_PARTY = "third_party"
VENDORED = ("envoy", "udpa", "validate", "xds")
VENDORED_OUT = ROOT / "src" / "aigc_gateway" / "api" / "envoy"
_VENDORED_FROM = re.compile(r"^from ((?:envoy|udpa|validate|xds)(?:\.\w+)*) import (\w+)", re.M)

# `from aigc.gateway.v1 import common_pb2 as ...` and `import aigc.gateway.v1.common_pb2`
_FROM = re.compile(r"^from aigc\.gateway\.v1 import ", re.M)
_IMPORT = re.compile(r"^import aigc\.gateway\.v1\.(\w+)$", re.M)
_QUALIFIED = re.compile(r"\baigc\.gateway\.v1\.(\w+_pb2)\b")


def _include_dirs(proto_root: Path) -> list[str]:
    import grpc_tools

    dirs = [str(proto_root), str(Path(grpc_tools.__file__).parent / "_proto")]
    # googleapis-common-protos ships google/api/*.proto beside its modules.
    for entry in sys.path:
        if (Path(entry) / "google" / "api" / "annotations.proto").exists():
            dirs.append(entry)
            break
    else:
        raise SystemExit("google/api/annotations.proto not found: pip install googleapis-common-protos")
    return dirs


def _rewrite(text: str) -> str:
    text = _FROM.sub("from . import ", text)
    text = _IMPORT.sub(r"from . import \1", text)
    return _QUALIFIED.sub(r"\1", text)


def generate(dest: Path, proto_root: Path = PROTO_ROOT) -> None:
    from grpc_tools import protoc

    protos = sorted(str(p.relative_to(proto_root)) for p in (proto_root / PROTO_PKG).glob("*.proto"))
    with tempfile.TemporaryDirectory() as scratch:
        args = ["protoc", *(f"-I{d}" for d in _include_dirs(proto_root)),
                f"--python_out={scratch}", f"--grpc_python_out={scratch}",
                f"--mypy_out={scratch}", f"--mypy_grpc_out={scratch}", *protos]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        dest.mkdir(parents=True, exist_ok=True)
        for f in sorted((Path(scratch) / PROTO_PKG).iterdir()):
            (dest / f.name).write_text(_rewrite(f.read_text()))
    (dest / "__init__.py").write_text('"""Generated from protos/aigc/gateway/v1 by scripts/genproto.py. Do not edit."""\n')


def generate_vendored(dest: Path, proto_root: Path = PROTO_ROOT) -> None:
    from grpc_tools import protoc

    proto_root = proto_root / THIRD_PARTY
    protos = sorted(str(p.relative_to(proto_root)) for top in VENDORED for p in (proto_root / top).rglob("*.proto"))
    with tempfile.TemporaryDirectory() as scratch:
        # With stubs, as for our own protos: mypy checks the auth service's ext_authz code against them.
        args = ["protoc", *(f"-I{d}" for d in _include_dirs(proto_root)),
                f"--python_out={scratch}", f"--grpc_python_out={scratch}",
                f"--mypy_out={scratch}", f"--mypy_grpc_out={scratch}", *protos]
        if protos and protoc.main(args) != 0:
            raise SystemExit("protoc failed (vendored protos)")
        dest.mkdir(parents=True, exist_ok=True)
        for f in sorted([*Path(scratch).rglob("*.py"), *Path(scratch).rglob("*.pyi")]):
            flat = "_".join(f.relative_to(scratch).parts)
            text = _VENDORED_FROM.sub(lambda m: f"from . import {m.group(1).replace('.', '_')}_{m.group(2)}",
                                      f.read_text())
            (dest / flat).write_text(text)
    (dest / "__init__.py").write_text('"""Generated from the vendored protos/third_party/{envoy,udpa,validate,xds} by '
                                      'scripts/genproto.py. Do not edit."""\n')


def _stale(fresh: Path, committed: Path) -> list[str]:
    cmp = filecmp.dircmp(fresh, committed, ignore=["__pycache__"])
    return cmp.left_only + cmp.right_only + cmp.diff_files


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the committed code is out of date")
    parser.add_argument("--protos", type=Path, default=PROTO_ROOT, help="root of the .proto tree")
    parser.add_argument("--out", type=Path, default=OUT, help="where the generated package lives")
    parser.add_argument("--vendored-out", type=Path, default=VENDORED_OUT,
                        help="where the vendored (Envoy) protos' package lives")
    opts = parser.parse_args()
    # protoc finds the mypy plugins (protoc-gen-mypy*) on PATH: the ones installed beside this interpreter.
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    if not opts.check:
        for out, gen in ((opts.out, generate), (opts.vendored_out, generate_vendored)):
            # Generate beside the package, then swap: a failing protoc leaves the committed code in place.
            with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
                fresh = Path(tmp) / out.name
                gen(fresh, opts.protos)
                if out.exists():
                    shutil.rmtree(out)
                fresh.rename(out)
            print(f"generated {out}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp) / "v1"
        generate(fresh, opts.protos)
        fresh_vendored = Path(tmp) / "envoy"
        generate_vendored(fresh_vendored, opts.protos)
        stale = _stale(fresh, opts.out) + _stale(fresh_vendored, opts.vendored_out)
        if stale:
            print("generated code is out of date with protos/ (run python scripts/genproto.py):", *sorted(stale))
            return 1
    print("generated code is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
