"""JSON logs that carry the request id, the RPC method and the caller."""
from __future__ import annotations

import logging
import sys
from typing import TextIO

from pythonjsonlogger.json import JsonFormatter

from .context import method_var, principal_var, request_id_var


class _ContextFilter(logging.Filter):
    """Adds the current call's request id, method and principal to every record."""

    def __init__(self, service: str):
        super().__init__()
        self.service = service

    def filter(self, record: logging.LogRecord) -> bool:
        record.service = self.service
        record.request_id = request_id_var.get()
        record.rpc = method_var.get()
        principal = principal_var.get()
        record.principal = principal.subject if principal else ""
        return True


class _GatewayHandler(logging.StreamHandler[TextIO]):
    """The handler :func:`setup` installs: a second call replaces it instead of adding another."""


def setup(service: str, level: str = "INFO", json_format: bool = True) -> None:
    """Configure the root logger once per process (idempotent)."""
    handler = _GatewayHandler(sys.stderr)
    if json_format:
        handler.setFormatter(
            JsonFormatter(
                "%(asctime)s %(levelname)s %(name)s %(message)s %(service)s %(request_id)s %(rpc)s %(principal)s",
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            )
        )
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(service)s [%(request_id)s] %(name)s: %(message)s")
        )
    handler.addFilter(_ContextFilter(service))
    root = logging.getLogger()
    for old in list(root.handlers):
        if isinstance(old, _GatewayHandler):
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # grpc and the Kubernetes client are chatty at INFO.
    for chatty in ("kubernetes_asyncio", "httpx", "httpcore"):
        logging.getLogger(chatty).setLevel(max(logging.WARNING, root.level))
