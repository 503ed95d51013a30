"""Database access: the async engine, the shared tables and the Alembic history."""
from .engine import Database, rowcount, unreachable

__all__ = ["Database", "rowcount", "unreachable"]
