"""Numbered schema migrations, applied in order and recorded in ``_migrations``.

Never edit a migration that has shipped; append a new one. Each runs in the caller's transaction.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import Connection, text
from sqlmodel import SQLModel

from diffagent.registry import schema  # noqa: F401  (registers the tables on SQLModel.metadata)

Migration = Callable[[Connection], None]


def m001_tables(conn: Connection) -> None:
    SQLModel.metadata.create_all(conn)


def m002_fulltext(conn: Connection) -> None:
    # One FTS row per model version: the text a user's query is matched against (BM25).
    conn.execute(
        text(
            "CREATE VIRTUAL TABLE model_fts USING fts5("
            "name, tags, trained_words, description, tokenize='porter unicode61')"
        )
    )
    # Creators' prompts, for "models whose users wrote prompts like this one".
    conn.execute(
        text(
            "CREATE VIRTUAL TABLE prompt_fts USING fts5("
            "prompt, content='sample_image', content_rowid='id', tokenize='porter unicode61')"
        )
    )


def m003_vectors(conn: Connection) -> None:
    # Sentence embeddings (float16 blobs), built at import time; searched brute force with numpy.
    conn.execute(
        text(
            "CREATE TABLE vector (kind TEXT NOT NULL, owner_id INTEGER NOT NULL, model TEXT NOT NULL,"
            " dim INTEGER NOT NULL, text_hash TEXT NOT NULL, data BLOB NOT NULL, PRIMARY KEY (kind, owner_id))"
        )
    )


def m004_meta(conn: Connection) -> None:
    conn.execute(text("CREATE TABLE registry_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)"))


def m005_model_kind(conn: Connection) -> None:
    # What each version is for (``registry/kinds.py``): checkpoint kinds or a LoRA's role, and the concepts a
    # request names to ask for it. Raw SQL, not a SQLModel table, so m001 never creates it ahead of this step.
    conn.execute(
        text(
            "CREATE TABLE model_kind (version_id INTEGER PRIMARY KEY, kinds TEXT NOT NULL,"
            " concepts TEXT NOT NULL, origin TEXT NOT NULL)"
        )
    )
    # a registry imported by an earlier release gets labels derived from what it already holds
    from diffagent.registry.writer import backfill_kinds

    backfill_kinds(conn)


MIGRATIONS: list[Migration] = [m001_tables, m002_fulltext, m003_vectors, m004_meta, m005_model_kind]


def applied(conn: Connection) -> set[str]:
    conn.execute(text("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at TEXT)"))
    return {row[0] for row in conn.execute(text("SELECT name FROM _migrations"))}


def migrate(conn: Connection) -> list[str]:
    """Apply pending migrations; returns the names applied."""
    done = applied(conn)
    ran = []
    for m in MIGRATIONS:
        if m.__name__ not in done:
            m(conn)
            conn.execute(
                text("INSERT INTO _migrations VALUES (:n, datetime('now'))"), {"n": m.__name__}
            )
            ran.append(m.__name__)
    return ran
