"""The generated code is checked against the .proto files: a contract change
without regeneration fails the check."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GENPROTO = ROOT / "scripts" / "genproto.py"


def _check(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(GENPROTO), "--check", *args], capture_output=True, text=True)


def test_committed_code_is_up_to_date() -> None:
    result = _check()
    assert result.returncode == 0, result.stdout + result.stderr


def test_check_fails_when_a_proto_changes_without_regeneration(tmp_path: Path) -> None:
    protos = tmp_path / "protos"
    shutil.copytree(ROOT / "protos", protos)
    out = tmp_path / "v1"
    shutil.copytree(ROOT / "src" / "aigc_gateway" / "api" / "v1", out, ignore=shutil.ignore_patterns("__pycache__"))
    assert _check("--protos", str(protos), "--out", str(out)).returncode == 0

    audit = protos / "aigc" / "gateway" / "v1" / "audit.proto"
    audit.write_text(audit.read_text().replace("  string page_token = 9;\n",
                                               "  string page_token = 9;\n  // New.\n  bool newest_last = 10;\n"))
    stale = _check("--protos", str(protos), "--out", str(out))
    assert stale.returncode == 1
    assert "audit_pb2.py" in stale.stdout

    subprocess.run([sys.executable, str(GENPROTO), "--protos", str(protos), "--out", str(out)], check=True,
                   capture_output=True)
    assert _check("--protos", str(protos), "--out", str(out)).returncode == 0


def test_generated_code_lives_under_the_project_package() -> None:
    from aigc_gateway.api.v1 import instance_pb2

    assert instance_pb2.DESCRIPTOR.package == "aigc.gateway.v1"
    source = (ROOT / "src" / "aigc_gateway" / "api" / "v1" / "instance_pb2.py").read_text()
    assert "from aigc.gateway" not in source and "import aigc." not in source
