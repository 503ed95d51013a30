"""The whole schema on one ``MetaData``: the core's shared tables and every service's own.

The core never imports a service. As :func:`aigc_gateway.server.load_service` finds a service's
``build`` by name, :func:`load_all` finds its tables by name: a service declares its own tables on
:class:`~aigc_gateway.db.models.Base` in ``services/<name>/models.py`` or ``services/<name>/*_models.py``,
and importing those modules (for each name in ``SERVICE_NAMES``) registers them. Alembic's ``env.py``
and the migration tests call it.
"""
from __future__ import annotations

import importlib
import pkgutil

from sqlalchemy import MetaData

from ..config import SERVICE_NAMES
from .models import Base


def table_modules(name: str) -> list[str]:
    """The modules of service ``name`` that declare tables (none for a service without tables)."""
    package = importlib.import_module(f"aigc_gateway.services.{name}")
    return sorted(f"{package.__name__}.{module.name}" for module in pkgutil.iter_modules(package.__path__)
                  if module.name == "models" or module.name.endswith("_models"))


def load_all() -> MetaData:
    """``Base.metadata`` with every service's tables registered on it."""
    for name in SERVICE_NAMES:
        for module in table_modules(name):
            importlib.import_module(module)
    return Base.metadata
