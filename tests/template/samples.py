"""The five sample templates (deploy/samples) as dicts and text, for the template service's tests."""
from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

SAMPLES_DIR = Path(__file__).resolve().parents[2] / "deploy" / "samples"
SAMPLES = ("stable-diffusion-cpu", "stable-diffusion-gpu", "stable-diffusion-gpushare",
           "stable-diffusion-eci-cpu", "stable-diffusion-eci-gpu")
DOMAIN = "aigc.test"


def sample_text(name: str = "stable-diffusion-cpu", domain: str = DOMAIN) -> str:
    return (SAMPLES_DIR / f"{name}.yaml").read_text().replace("${DOMAIN}", domain)


def sample(name: str = "stable-diffusion-cpu", domain: str = DOMAIN, namespace: str = "default",
           rename: str | None = None) -> dict[str, Any]:
    obj = yaml.safe_load(sample_text(name, domain))
    obj["metadata"]["namespace"] = namespace
    if rename:
        obj["metadata"]["name"] = rename
    return obj


def variant(mutate: Callable[[dict[str, Any]], None], base: dict[str, Any] | None = None) -> dict[str, Any]:
    obj = copy.deepcopy(base or sample())
    mutate(obj)
    return obj


def conf(obj: dict[str, Any]) -> list[dict[str, Any]]:
    return obj["spec"]["network"]["networkConf"]


def set_conf(obj: dict[str, Any], name: str, value: str | None) -> None:
    """Replace (or with None remove) every network entry called `name`."""
    entries = [e for e in conf(obj) if e["name"] != name]
    if value is not None:
        entries.append({"name": name, "value": value})
    obj["spec"]["network"]["networkConf"] = entries


def container(obj: dict[str, Any], i: int = 0) -> dict[str, Any]:
    return obj["spec"]["gameServerTemplate"]["spec"]["containers"][i]
