"""Manifest files for `templates apply|validate|preview-update -f`: one or more YAML
documents, with `${VAR}` placeholders (the samples carry `${DOMAIN}`) filled from --var."""
from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from .exitcodes import Exit, Failure

_PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass(frozen=True)
class Manifest:
    name: str
    namespace: str  # empty when the manifest does not say
    text: str
    source: str  # file and document number, for messages


def parse_vars(pairs: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise Failure(f"--var {pair!r}: want NAME=VALUE", Exit.USAGE)
        out[key] = value
    return out


def substitute(text: str, variables: dict[str, str], source: str) -> str:
    missing = sorted({m.group(1) for m in _PLACEHOLDER.finditer(text)} - set(variables))
    if missing:
        flags = " ".join(f"--var {m}=..." for m in missing)
        raise Failure(f"{source}: placeholders without a value: {', '.join(missing)} (give {flags})", Exit.USAGE)
    return _PLACEHOLDER.sub(lambda m: variables[m.group(1)], text)


def load(path: str, variables: dict[str, str]) -> list[Manifest]:
    """Read `path` (`-` is stdin) into one Manifest per non-empty YAML document."""
    try:
        raw = sys.stdin.read() if path == "-" else Path(path).read_text()
    except OSError as exc:
        raise Failure(f"{path}: {exc.strerror}", Exit.USAGE) from None
    text = substitute(raw, variables, path)
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        raise Failure(f"{path}: not valid YAML: {exc}", Exit.USAGE) from None
    if not docs:
        raise Failure(f"{path}: no manifest in it", Exit.USAGE)
    out = []
    for index, doc in enumerate(docs, 1):
        source = path if len(docs) == 1 else f"{path} (document {index})"
        if not isinstance(doc, dict):
            raise Failure(f"{source}: a manifest must be a mapping", Exit.USAGE)
        meta = doc.get("metadata") or {}
        name = meta.get("name") if isinstance(meta, dict) else None
        if not isinstance(name, str) or not name:
            raise Failure(f"{source}: metadata.name is missing", Exit.USAGE)
        namespace = meta.get("namespace") or ""
        # One document: send the text as written (the server reports positions in it);
        # several: each as its own YAML document.
        body = text if len(docs) == 1 else yaml.safe_dump(doc, sort_keys=False)
        out.append(Manifest(name=name, namespace=str(namespace), text=body, source=source))
    return out
