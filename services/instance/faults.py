"""The instance service's fault points (crash tests); the mechanism is the core's :mod:`aigc_gateway.faults`.

`AIGC_GATEWAY_FAULT=<point>` makes the process exit at that point, `AIGC_GATEWAY_HOLD=<point>` makes the call
wait there alive until released or killed. :data:`POINTS` lists every point of a process running this service
(the core's call points first) so tests can iterate and a typo in the variable is reported at start.
"""
from __future__ import annotations

from aigc_gateway.faults import ENV, EXIT_CODE, HOLD_DIR_ENV, HOLD_ENV, POINTS, armed, point, reach, register

INSTANCE_POINTS = (
    "install.after_intent", "install.after_gss_write", "install.after_commit",
    "pause.after_intent", "pause.after_gss_write", "pause.after_commit",
    "resume.after_intent", "resume.after_gss_write", "resume.after_commit",
    "uninstall.after_intent", "uninstall.after_gss_write", "uninstall.after_commit",
    "uninstall.after_disk_delete",
    # A release (the delete's follow-up, a reconciler pass) that has read the slot RELEASING, before its disks.
    "release.after_read",
    "restart.after_effect", "restart.after_pod_delete",
    "realign.after_intent", "realign.after_gss_write",
    # DeleteInstance's id freed and handed to another user's install before the delete answers (issue 20).
    "uninstall.after_release",
    # The rollout step (issue 14, rollouts.py), between its writes in Plan.writes' order.
    "rollout.after_intent", "rollout.after_holds", "rollout.after_partition_raise", "rollout.after_priorities",
    "rollout.after_partition", "rollout.after_commit",
)
register(INSTANCE_POINTS)

__all__ = ["ENV", "EXIT_CODE", "HOLD_DIR_ENV", "HOLD_ENV", "POINTS", "armed", "point", "reach"]
