"""A template's idle policy as written on its GameServerSet: the annotation keys and their pure parsing.

The template service refuses a template whose idle annotations do not parse (INVALID_ARGUMENT naming the
annotation); the instance service's culler reads the same annotations to decide when an instance is idle. Both
read them here so the key names and the grammar live in one place (services never import each other).

Keys (after the configured ``template.annotation_prefix``, ``aigc.gateway.io/`` by default):

- ``idle-after``: how long an instance may go without activity before it is paused: ``0`` (never), a number
  of seconds, or a duration such as ``90s``, ``30m``, ``2h``, ``1h30m``, ``1d``. Missing: the configured default
  (``instance.idle``), which GPU templates may have shorter than CPU ones.
- ``idle-probe-path``: an HTTP GET path on the pod (``/queue``) that says whether the engine is working,
  for work that makes no requests through the ingress (a long websocket, a queue of jobs).
- ``idle-probe-busy``: the rule for busy, one or more JSON paths separated by ``,`` (``queue_running,
  queue_pending``; ``state.job_count``; ``jobs[0]``): busy when any of them is non-empty / non-zero / true.
  Required with a probe path.
- ``idle-probe-port``: the pod port the probe dials; missing: the ingress network's ``Port``.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

IDLE_AFTER = "idle-after"
PROBE_PATH = "idle-probe-path"
PROBE_BUSY = "idle-probe-busy"
PROBE_PORT = "idle-probe-port"
KEYS = (IDLE_AFTER, PROBE_PATH, PROBE_BUSY, PROBE_PORT)

MAX_SECONDS = 90 * 24 * 3600
_DURATION = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
_STEP = re.compile(r"^([A-Za-z_][A-Za-z0-9_-]*)((?:\[\d+\])*)$")
_PATH_CHARS = re.compile(r"^/[A-Za-z0-9\-._~!$&'()*+,;=:@/%?]*$")


class IdleAnnotationError(ValueError):
    """One annotation's value is wrong; ``key`` is the annotation's suffix."""

    def __init__(self, key: str, message: str, reason: str):
        super().__init__(message)
        self.key, self.reason = key, reason


@dataclass(frozen=True)
class Probe:
    path: str
    busy: tuple[tuple[str | int, ...], ...]  # each rule a JSON path: keys and list indices
    port: int | None = None  # None: the ingress network's Port


@dataclass(frozen=True)
class IdleAnnotations:
    after_seconds: float | None = None  # None: the configured default; 0: never
    probe: Probe | None = None


def parse_duration(text: str) -> float:
    """``0``, ``3600``, ``90s``, ``30m``, ``2h``, ``1h30m``, ``1d`` as seconds; ValueError otherwise."""
    value = text.strip()
    if value.isdigit():
        seconds = int(value)
    else:
        match = _DURATION.match(value)
        if not value or not match or not any(match.groups()):
            raise ValueError(f"{text!r} is not a duration: write 0 (never), seconds, or e.g. 90s, 30m, 2h, 1h30m, 1d")
        d, h, m, s = (int(g or 0) for g in match.groups())
        seconds = ((d * 24 + h) * 60 + m) * 60 + s
    if seconds > MAX_SECONDS:
        raise ValueError(f"{text!r} is longer than {MAX_SECONDS // 86400} days")
    return float(seconds)


def parse_json_path(text: str) -> tuple[str | int, ...]:
    """``state.job_count`` -> ('state', 'job_count'); ``jobs[0].id`` -> ('jobs', 0, 'id')."""
    out: list[str | int] = []
    for part in text.strip().split("."):
        match = _STEP.match(part)
        if not match:
            raise ValueError(f"{text!r} is not a JSON path like queue_running, state.job_count or jobs[0]")
        out.append(match[1])
        out.extend(int(i) for i in re.findall(r"\[(\d+)\]", match[2]))
    return tuple(out)


def read(annotations: Mapping[str, Any] | None, prefix: str) -> tuple[IdleAnnotations, list[IdleAnnotationError]]:
    """The idle annotations and every error in them (an erroneous annotation reads as missing)."""
    notes = {k[len(prefix):]: str(v) for k, v in (annotations or {}).items() if k.startswith(prefix)}
    errors: list[IdleAnnotationError] = []
    after = None
    if IDLE_AFTER in notes:
        try:
            after = parse_duration(notes[IDLE_AFTER])
        except ValueError as exc:
            errors.append(IdleAnnotationError(IDLE_AFTER, str(exc), "INVALID_IDLE_AFTER"))
    path, busy, port = notes.get(PROBE_PATH), notes.get(PROBE_BUSY), notes.get(PROBE_PORT)
    if path is None:
        for key in (PROBE_BUSY, PROBE_PORT):
            if key in notes:
                errors.append(IdleAnnotationError(key, f"needs {prefix}{PROBE_PATH} (the probe's HTTP path)",
                                                  "IDLE_PROBE_PATH_REQUIRED"))
        return IdleAnnotations(after), errors
    ok = True
    if not _PATH_CHARS.match(path.strip()):
        errors.append(IdleAnnotationError(PROBE_PATH, f"{path!r} must be an HTTP path starting with '/'",
                                          "INVALID_IDLE_PROBE_PATH"))
        ok = False
    rules: list[tuple[str | int, ...]] = []
    if busy is None or not busy.strip():
        errors.append(IdleAnnotationError(PROBE_BUSY, "a probe needs the rule for busy: JSON paths separated by "
                                          "',' that are non-empty or non-zero while the engine works (for example "
                                          "queue_running,queue_pending)", "IDLE_PROBE_BUSY_REQUIRED"))
        ok = False
    else:
        for item in busy.split(","):
            try:
                rules.append(parse_json_path(item))
            except ValueError as exc:
                errors.append(IdleAnnotationError(PROBE_BUSY, str(exc), "INVALID_IDLE_PROBE_BUSY"))
                ok = False
    number = None
    if port is not None:
        if not port.strip().isdigit() or not 1 <= int(port) <= 65535:
            errors.append(IdleAnnotationError(PROBE_PORT, f"must be a port number 1-65535, got {port!r}",
                                              "INVALID_IDLE_PROBE_PORT"))
            ok = False
        else:
            number = int(port)
    return IdleAnnotations(after, Probe(path.strip(), tuple(rules), number) if ok else None), errors


def busy(document: Any, rules: tuple[tuple[str | int, ...], ...]) -> bool:
    """Whether any rule's value in the probe's JSON answer is non-empty, non-zero or true."""
    for rule in rules:
        value = document
        for step in rule:
            if isinstance(step, int) and isinstance(value, list) and step < len(value):
                value = value[step]
            elif isinstance(step, str) and isinstance(value, dict) and step in value:
                value = value[step]
            else:
                value = None
                break
        if value:  # non-empty string/list/object, non-zero number, true
            return True
    return False
