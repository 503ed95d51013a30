#!/usr/bin/env python3
"""Write one values file per sample template (deploy/samples/*.yaml) into this directory.

    python deploy/helm/aigc-gateway/ci/generate.py          # (re)write them
    python deploy/helm/aigc-gateway/ci/generate.py --check  # exit 1 when one is stale

Each file installs the gateway for that sample's namespace, with the sample as the
release's initial template (`templates:`), ${DOMAIN} filled in. tests/delivery renders
the chart with each and has the test bed's apiserver accept every object (dry run).
"""
from __future__ import annotations

import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
SAMPLES = HERE.parents[3] / "deploy" / "samples"
DOMAIN = "aigc.example.com"
HEADER = "# Generated from deploy/samples/{name}.yaml by ci/generate.py; do not edit.\n"


def values_for(sample: Path) -> str:
    obj = yaml.safe_load(sample.read_text().replace("${DOMAIN}", DOMAIN))
    namespace = obj["metadata"].get("namespace", "default")
    values = {
        "domain": DOMAIN,
        "namespaces": [namespace],
        "gssLabels": {"aigc.gateway.io/template": "true"},
        "ingress": {"tls": {"secretName": "aigc-dashboard-tls"}},
        "templates": [obj],
    }
    return HEADER.format(name=sample.stem) + yaml.safe_dump(values, sort_keys=False)


def expected() -> dict[Path, str]:
    return {HERE / f"{s.stem}-values.yaml": values_for(s) for s in sorted(SAMPLES.glob("*.yaml"))}


def main(argv: list[str]) -> int:
    files = expected()
    if "--check" in argv:
        stale = [p.name for p, text in files.items() if not p.exists() or p.read_text() != text]
        if stale:
            print("stale (run python deploy/helm/aigc-gateway/ci/generate.py):", *stale)
            return 1
        return 0
    for path, text in files.items():
        path.write_text(text)
        print(f"wrote {path.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
