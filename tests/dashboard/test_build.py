"""The dashboard's generated API types are those of the committed OpenAPI document (the drift check
every generated artefact has), and the build is what the bridge serves: same-origin assets, nothing
from any other origin at run time, within the size goal."""
from __future__ import annotations

import gzip
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "dashboard"
SCHEMA = DASHBOARD / "src" / "api" / "schema.d.ts"
BIN = DASHBOARD / "node_modules" / ".bin"


def require_installed() -> None:
    if not (BIN / "openapi-typescript").exists() or not (DASHBOARD / "dist" / "index.html").is_file():
        pytest.fail("the dashboard is not installed and built: run scripts/setup.d/60-dashboard.sh", pytrace=False)


def test_generated_api_types_match_the_committed_openapi_document(tmp_path: Path) -> None:
    require_installed()
    converted, typed = tmp_path / "openapi3.json", tmp_path / "schema.d.ts"
    for args in ([str(BIN / "swagger2openapi"), str(REPO / "docs" / "openapi" / "aigc-gateway.swagger.json"),
                  "-o", str(converted)],
                 [str(BIN / "openapi-typescript"), str(converted), "-o", str(typed)]):
        result = subprocess.run(args, cwd=DASHBOARD, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stdout + result.stderr
    assert typed.read_text() == SCHEMA.read_text(), \
        "stale: run `python bridge/generate.py` (or `npm run gen` in dashboard/) and commit src/api/schema.d.ts"


def test_built_page_loads_only_its_own_assets_within_budget() -> None:
    require_installed()
    dist = DASHBOARD / "dist"
    html = (dist / "index.html").read_text()
    references = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert references, html
    for ref in references:  # nothing from another origin (no CDN), only built, content-hashed assets
        assert ref.startswith("/assets/") or ref.startswith("data:"), ref
    js = sum(len(gzip.compress(p.read_bytes(), 9)) for p in dist.glob("assets/*.js"))
    css = sum(len(gzip.compress(p.read_bytes(), 9)) for p in dist.glob("assets/*.css"))
    print(f"dashboard build: JS {js / 1024:.1f} KiB gzip (all chunks), CSS {css / 1024:.1f} KiB gzip")
    assert js < 250 * 1024  # the goal for the whole build, admin chunks included
