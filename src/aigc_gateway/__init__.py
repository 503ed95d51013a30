"""AIGC Gateway: per-user, pausable AIGC engine instances on Kubernetes and OpenKruiseGame.

This package is the shared core every service uses (configuration, the gRPC
server bootstrap, identity, errors, the database and the audit log); the
services themselves are mapped in from ``services/<name>/`` as
``aigc_gateway.services.<name>``.
"""

__version__ = "0.1.0"
