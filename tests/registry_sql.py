"""Reading and writing a test registry with plain SQL, on SQLite or PostgreSQL alike (``DIFFAGENT_TEST_REGISTRY``).

Tests use these instead of ``sqlite3.connect``, so the registry suite runs unchanged on both backends.
"""

from __future__ import annotations

from sqlalchemy import text

from diffagent.registry.db import open_engine


def sql_rows(db, sql: str, params: dict | None = None) -> list[tuple]:
    """The rows of ``sql`` as tuples (booleans read back as 0 / 1 on both backends)."""
    engine = open_engine(db)
    try:
        with engine.connect() as conn:
            return [
                tuple(int(v) if isinstance(v, bool) else v for v in r) for r in conn.execute(text(sql), params or {})
            ]
    finally:
        engine.dispose()


def sql_exec(db, *statements: str) -> None:
    """Run ``statements`` in one transaction."""
    engine = open_engine(db)
    try:
        with engine.begin() as conn:
            for s in statements:
                conn.execute(text(s))
    finally:
        engine.dispose()


def holds_registry(db) -> bool:
    """A registry is there: the file exists, or the database has its tables."""
    if not isinstance(db, str):
        return db.exists()
    from sqlalchemy import create_engine, inspect

    from diffagent.registry.location import sqlalchemy_url

    engine = create_engine(sqlalchemy_url(db))
    try:
        with engine.connect() as conn:
            return inspect(conn).has_table("_migrations")
    finally:
        engine.dispose()
