"""Database access: the async engine, the shared tables and the Alembic history."""
from .engine import Database, rowcount

__all__ = ["Database", "rowcount"]
