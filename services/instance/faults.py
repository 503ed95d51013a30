"""Fault injection for crash tests: `AIGC_GATEWAY_FAULT=<point>` makes the process exit at that point.

Inert unless the variable is set. The exit is `os._exit`: no cleanup, no
flushing, no transaction commit, exactly what a killed process leaves behind.
Points are named `<operation>.<step>`; :data:`POINTS` lists them all so tests
can iterate and a typo in the variable is reported at start.
"""
from __future__ import annotations

import logging
import os
import sys

ENV = "AIGC_GATEWAY_FAULT"
EXIT_CODE = 86

POINTS = (
    "install.after_intent", "install.after_gss_write", "install.after_commit",
    "pause.after_intent", "pause.after_gss_write", "pause.after_commit",
    "resume.after_intent", "resume.after_gss_write", "resume.after_commit",
    "uninstall.after_intent", "uninstall.after_gss_write", "uninstall.after_commit",
    "uninstall.after_disk_delete",
    "realign.after_intent", "realign.after_gss_write",
)

log = logging.getLogger(__name__)


def armed() -> str:
    value = os.environ.get(ENV, "")
    if value and value not in POINTS:
        log.error("%s=%s names no fault point; known: %s", ENV, value, ", ".join(POINTS))
    return value


def point(name: str) -> None:
    """Exit the process now if the fault switch names this point."""
    if os.environ.get(ENV) == name:
        sys.stderr.write(f"fault injected at {name}: exiting\n")
        sys.stderr.flush()
        os._exit(EXIT_CODE)
