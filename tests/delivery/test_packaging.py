"""What the images are built from: the distribution the Dockerfile installs holds the CLI, every
service and the migrations; both Dockerfiles are multi-stage, copy only what exists, run non-root."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from .conftest import REPO


def test_the_wheel_holds_services_cli_and_migrations(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):  # exactly what the Dockerfile copies
        shutil.copy2(REPO / name, source / name)
    for name in ("src", "services"):
        shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                             "-w", str(tmp_path / "dist"), str(source)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    [wheel] = (tmp_path / "dist").glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for required in ("aigc_gateway/ctl/main.py", "aigc_gateway/db/migrations/env.py",
                     *(f"aigc_gateway/services/{s}/server.py" for s in ("template", "instance", "auth", "usersync"))):
        assert required in names, required
    assert any(n.startswith("aigc_gateway/db/migrations/versions/") and n.endswith(".py") for n in names)
    [entry_points] = [n for n in names if n.endswith("entry_points.txt")]
    scripts = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "aigcctl = aigc_gateway.ctl.main:main" in scripts and "aigc-gateway = aigc_gateway.cli:main" in scripts
    assert not any(n.startswith(("tests/", "testbed/", "bridge/")) for n in names)


def _stages(dockerfile: Path) -> list[str]:
    return re.findall(r"^FROM\s+(\S+)", dockerfile.read_text(), re.M)


def test_dockerfiles_are_multi_stage_non_root_and_copy_what_exists() -> None:
    for dockerfile, context in ((REPO / "Dockerfile", REPO), (REPO / "bridge" / "Dockerfile", REPO / "bridge")):
        text = dockerfile.read_text()
        assert len(_stages(dockerfile)) >= 2, dockerfile
        [user] = re.findall(r"^USER\s+(\S+)", text, re.M)
        assert not user.startswith(("0", "root")), user
        assert "COPY --from=build" in text
        for sources in re.findall(r"^COPY\s+(?!--from)(.+)\s+\S+$", text, re.M):
            for src in sources.split():
                assert list(context.glob(src)), f"{dockerfile}: COPY {src} matches nothing in {context}"
