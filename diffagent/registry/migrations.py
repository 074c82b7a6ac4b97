"""Numbered schema migrations, applied in order and recorded in ``_migrations``.

Never edit a migration that has shipped; append a new one. Each runs in the caller's transaction. The SQL is
SQLite's; on PostgreSQL ``ddl`` maps its types (64-bit ``INTEGER`` to ``BIGINT``, ``BLOB`` to ``BYTEA``, and
``JSON`` columns to ``TEXT``, so both databases hand back the same JSON strings), and migrations made only of
SQLite's full-text tables do nothing there.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime

from sqlalchemy import Connection, text

Migration = Callable[[Connection], None]


#: the tables of the first release, frozen as SQL: ``schema.py`` may grow, but a new column or table reaches every
#: database (fresh or old) through a new migration, never through this one
_M001 = (
    (
        "CREATE TABLE model (id INTEGER NOT NULL, source VARCHAR NOT NULL, slug VARCHAR, name VARCHAR NOT "
        "NULL, type VARCHAR NOT NULL, description VARCHAR NOT NULL, creator VARCHAR, nsfw BOOLEAN NOT NULL, "
        "poi BOOLEAN NOT NULL, allow_commercial_use VARCHAR, allow_derivatives BOOLEAN, allow_no_credit "
        "BOOLEAN, allow_different_license BOOLEAN, downloads INTEGER NOT NULL, favorites INTEGER NOT NULL, "
        "rating FLOAT, rating_count INTEGER NOT NULL, tags JSON NOT NULL, PRIMARY KEY (id), UNIQUE (slug))"
    ),
    "CREATE INDEX ix_model_type ON model (type)",
    "CREATE INDEX ix_model_nsfw ON model (nsfw)",
    "CREATE INDEX ix_model_source ON model (source)",
    "CREATE INDEX ix_model_downloads ON model (downloads)",
    (
        "CREATE TABLE sample_image (id INTEGER NOT NULL, page_model_id INTEGER NOT NULL, page_version_id "
        "INTEGER NOT NULL, version_id INTEGER, model_hash VARCHAR, prompt VARCHAR NOT NULL, negative_prompt "
        "VARCHAR NOT NULL, sampler VARCHAR, steps INTEGER, cfg_scale FLOAT, width INTEGER, height INTEGER, "
        "clip_skip INTEGER, nsfw BOOLEAN NOT NULL, resources JSON NOT NULL, PRIMARY KEY (id))"
    ),
    "CREATE INDEX ix_sample_image_model_hash ON sample_image (model_hash)",
    "CREATE INDEX ix_sample_image_page_model_id ON sample_image (page_model_id)",
    "CREATE INDEX ix_sample_image_version_id ON sample_image (version_id)",
    "CREATE INDEX ix_sample_image_page_version_id ON sample_image (page_version_id)",
    (
        "CREATE TABLE model_version (id INTEGER NOT NULL, model_id INTEGER NOT NULL, name VARCHAR NOT NULL, "
        "base_model VARCHAR NOT NULL, family VARCHAR NOT NULL, air VARCHAR NOT NULL, trained_words JSON NOT "
        "NULL, description VARCHAR NOT NULL, created_at VARCHAR, downloads INTEGER NOT NULL, rating FLOAT, "
        "hf_repo VARCHAR, hf_file VARCHAR, download_url VARCHAR, local_path VARCHAR, recommended JSON NOT "
        "NULL, PRIMARY KEY (id), FOREIGN KEY(model_id) REFERENCES model (id), UNIQUE (air))"
    ),
    "CREATE INDEX ix_model_version_model_id ON model_version (model_id)",
    "CREATE INDEX ix_model_version_family ON model_version (family)",
    (
        "CREATE TABLE model_file (id INTEGER NOT NULL, version_id INTEGER NOT NULL, name VARCHAR NOT NULL, "
        "kind VARCHAR NOT NULL, size_kb FLOAT, format VARCHAR, fp VARCHAR, size VARCHAR, sha256 VARCHAR, "
        'autov2 VARCHAR, blake3 VARCHAR, crc32 VARCHAR, download_url VARCHAR, "primary" BOOLEAN NOT NULL, '
        "PRIMARY KEY (id), FOREIGN KEY(version_id) REFERENCES model_version (id))"
    ),
    "CREATE INDEX ix_model_file_version_id ON model_file (version_id)",
    "CREATE INDEX ix_model_file_autov2 ON model_file (autov2)",
    "CREATE INDEX ix_model_file_sha256 ON model_file (sha256)",
    (
        "CREATE TABLE usage_stats (version_id INTEGER NOT NULL, n_images INTEGER NOT NULL, samplers JSON NOT "
        "NULL, steps JSON NOT NULL, cfg_scale JSON NOT NULL, sizes JSON NOT NULL, clip_skip JSON NOT NULL, "
        "negative_prompt VARCHAR NOT NULL, loras JSON NOT NULL, lora_weight FLOAT, PRIMARY KEY (version_id), "
        "FOREIGN KEY(version_id) REFERENCES model_version (id))"
    ),
)


#: SQLite type names and what PostgreSQL calls the same storage (SQLite's INTEGER is 64-bit)
_PG_TYPES = {"INTEGER": "BIGINT", "BLOB": "BYTEA", "JSON": "TEXT", "FLOAT": "DOUBLE PRECISION"}
_TYPE_WORD = re.compile(r"\b(" + "|".join(_PG_TYPES) + r")\b")


def is_postgres(conn: Connection) -> bool:
    return conn.dialect.name == "postgresql"


def ddl(conn: Connection, statement: str) -> None:
    """Run a frozen ``CREATE TABLE`` written for SQLite, with PostgreSQL's type names there."""
    if is_postgres(conn):
        statement = _TYPE_WORD.sub(lambda m: _PG_TYPES[m.group(1)], statement)
    conn.execute(text(statement))


def m001_tables(conn: Connection) -> None:
    for statement in _M001:
        ddl(conn, statement)


def m002_fulltext(conn: Connection) -> None:
    if is_postgres(conn):
        return  # SQLite's FTS5 tables, dropped again by m006: nothing to make on PostgreSQL
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
    ddl(
        conn,
        "CREATE TABLE vector (kind TEXT NOT NULL, owner_id INTEGER NOT NULL, model TEXT NOT NULL,"
        " dim INTEGER NOT NULL, text_hash TEXT NOT NULL, data BLOB NOT NULL, PRIMARY KEY (kind, owner_id))",
    )


def m004_meta(conn: Connection) -> None:
    ddl(conn, "CREATE TABLE registry_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")


def m005_model_kind(conn: Connection) -> None:
    # What each version is for (``registry/kinds.py``): checkpoint kinds or a LoRA's role, and the concepts a
    # request names to ask for it. Raw SQL, not a SQLModel table, so m001 never creates it ahead of this step.
    ddl(
        conn,
        "CREATE TABLE model_kind (version_id INTEGER PRIMARY KEY, kinds TEXT NOT NULL,"
        " concepts TEXT NOT NULL, origin TEXT NOT NULL)",
    )
    # a registry imported by an earlier release gets labels derived from what it already holds
    from diffagent.registry.writer import backfill_kinds

    backfill_kinds(conn)


def m006_no_fulltext_tables(conn: Connection) -> None:
    # BM25 is computed in memory from the tables (``registry/lexical.py``), the same on SQLite and PostgreSQL;
    # the FTS5 copies of the model text and of every creator prompt were no longer read.
    if not is_postgres(conn):
        conn.execute(text("DROP TABLE IF EXISTS model_fts"))
        conn.execute(text("DROP TABLE IF EXISTS prompt_fts"))


MIGRATIONS: list[Migration] = [
    m001_tables,
    m002_fulltext,
    m003_vectors,
    m004_meta,
    m005_model_kind,
    m006_no_fulltext_tables,
]

#: one migrating process at a time on a shared PostgreSQL database (any constant key of our own)
_PG_LOCK = 0x64696666


def applied(conn: Connection) -> set[str]:
    conn.execute(text("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at TEXT)"))
    return {row[0] for row in conn.execute(text("SELECT name FROM _migrations"))}


def migrate(conn: Connection) -> list[str]:
    """Apply pending migrations; returns the names applied. On PostgreSQL a transaction-scoped advisory lock keeps
    two processes that open a new database at once from both migrating it."""
    if is_postgres(conn):
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK})
    done = applied(conn)
    ran = []
    for m in MIGRATIONS:
        if m.__name__ not in done:
            m(conn)
            conn.execute(
                text("INSERT INTO _migrations VALUES (:n, :at)"),
                {"n": m.__name__, "at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S")},
            )
            ran.append(m.__name__)
    return ran
