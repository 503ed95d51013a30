"""Database access: the async engine, the shared tables and the Alembic history."""
from .engine import Database

__all__ = ["Database"]
