"""Schema and migrations: a fresh database gets every table, re-opening applies nothing, and a
database from an older release gets only the migrations it lacks."""

from __future__ import annotations

import sqlite3

import pytest
from sqlalchemy import text

from diffagent.errors import UserInputError
from diffagent.registry.db import open_engine
from diffagent.registry.migrations import MIGRATIONS, migrate

TABLES = {"model", "model_version", "model_file", "usage_stats", "sample_image", "model_fts", "prompt_fts",
          "vector", "registry_meta", "model_kind", "_migrations"}
NAMES = ["m001_tables", "m002_fulltext", "m003_vectors", "m004_meta", "m005_model_kind"]


def _tables(path) -> set[str]:
    con = sqlite3.connect(path)
    try:
        return {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    finally:
        con.close()


def _applied(path) -> list[str]:
    con = sqlite3.connect(path)
    try:
        return [r[0] for r in con.execute("SELECT name FROM _migrations ORDER BY rowid")]
    finally:
        con.close()


def test_fresh_database_has_all_tables_and_records_migrations(db):
    open_engine(db, create=True).dispose()
    assert TABLES <= _tables(db)
    assert _applied(db) == NAMES
    assert [m.__name__ for m in MIGRATIONS] == NAMES


def test_reopening_applies_nothing(db):
    open_engine(db, create=True).dispose()
    engine = open_engine(db)
    with engine.begin() as conn:
        assert migrate(conn) == []
    engine.dispose()
    assert _applied(db) == NAMES


def test_older_database_gets_only_the_missing_migration(db):
    open_engine(db, create=True).dispose()
    con = sqlite3.connect(db)
    con.execute("DROP TABLE registry_meta")
    con.execute("DELETE FROM _migrations WHERE name = 'm004_meta'")
    con.commit()
    con.close()
    engine = open_engine(db)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM registry_meta")).scalar() == 0
    engine.dispose()
    assert _applied(db) == NAMES[:3] + ["m005_model_kind", "m004_meta"]  # only the missing one, applied last


def test_missing_registry_is_refused_not_created(tmp_path):
    missing = tmp_path / "typo.db"
    with pytest.raises(UserInputError, match="does not exist"):
        open_engine(missing)
    assert not missing.exists()


def test_foreign_keys_are_enforced(db):
    engine = open_engine(db, create=True)
    with pytest.raises(Exception, match="FOREIGN KEY"), engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO model_version (id, model_id, name, base_model, family, air, trained_words, description,"
            " downloads, recommended) VALUES (1, 999, 'v', 'SD 1.5', 'sd1', 'urn:x', '[]', '', 0, '{}')"))
    engine.dispose()


def test_migrations_build_exactly_the_tables_schema_py_declares(db):
    """m001 is frozen SQL: a column added to ``schema.py`` without a migration of its own fails here."""
    from sqlmodel import SQLModel

    from diffagent.registry import schema  # noqa: F401 - registers the tables

    open_engine(db, create=True).dispose()
    con = sqlite3.connect(db)
    try:
        for table in SQLModel.metadata.sorted_tables:
            in_db = {r[1]: (r[3], r[5]) for r in con.execute(f"PRAGMA table_info({table.name})")}
            declared = {c.name: (not c.nullable, c.primary_key) for c in table.columns}
            assert set(in_db) == set(declared), (table.name, set(in_db) ^ set(declared))
            for name, (not_null, pk) in declared.items():
                assert bool(in_db[name][1]) == bool(pk), (table.name, name)
                assert bool(in_db[name][0]) == not_null or pk, (table.name, name)
            indexes = {r[1] for r in con.execute(f"PRAGMA index_list({table.name})") if r[1].startswith("ix_")}
            assert indexes == {i.name for i in table.indexes}, table.name
    finally:
        con.close()


def test_m001_is_frozen_sql():
    import inspect

    from diffagent.registry import migrations

    assert "create_all" not in inspect.getsource(migrations)
