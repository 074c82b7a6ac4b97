"""Schema and migrations, on SQLite and PostgreSQL: a fresh database gets every table, re-opening applies nothing,
and a database from an older release gets only the migrations it lacks."""

from __future__ import annotations

import sqlite3

import pytest
from sqlalchemy import inspect, text

from diffagent.errors import UserInputError
from diffagent.registry.db import open_engine
from diffagent.registry.migrations import MIGRATIONS, migrate

TABLES = {
    "model",
    "model_version",
    "model_file",
    "usage_stats",
    "sample_image",
    "vector",
    "registry_meta",
    "model_kind",
    "_migrations",
}
NAMES = ["m001_tables", "m002_fulltext", "m003_vectors", "m004_meta", "m005_model_kind", "m006_no_fulltext_tables"]


def _tables(db) -> set[str]:
    engine = open_engine(db)
    try:
        with engine.connect() as conn:
            return set(inspect(conn).get_table_names())
    finally:
        engine.dispose()


def _applied(db) -> list[str]:
    """The migrations recorded, by name."""
    engine = open_engine(db)
    try:
        with engine.connect() as conn:
            return sorted(conn.execute(text("SELECT name FROM _migrations")).scalars())
    finally:
        engine.dispose()


def test_fresh_database_has_all_tables_and_records_migrations(db):
    open_engine(db, create=True).dispose()
    assert _tables(db) == TABLES  # and no full-text tables: BM25 is built in memory
    assert _applied(db) == sorted(NAMES)
    assert [m.__name__ for m in MIGRATIONS] == NAMES


def test_reopening_applies_nothing(db):
    open_engine(db, create=True).dispose()
    engine = open_engine(db)
    with engine.begin() as conn:
        assert migrate(conn) == []
    engine.dispose()
    assert _applied(db) == sorted(NAMES)


def test_older_database_gets_only_the_missing_migration(db):
    engine = open_engine(db, create=True)
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE registry_meta"))
        conn.execute(text("DELETE FROM _migrations WHERE name = 'm004_meta'"))
    engine.dispose()
    engine = open_engine(db)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM registry_meta")).scalar() == 0
    engine.dispose()
    assert sorted(_applied(db)) == sorted(NAMES)  # recorded once each: only the missing one ran


@pytest.mark.sqlite_only
def test_a_registry_with_fulltext_tables_loses_them_and_keeps_its_rows(tiny_registry_copy):
    """A registry of an earlier release (FTS5 tables, m006 not applied) is upgraded on open."""
    con = sqlite3.connect(tiny_registry_copy)
    con.execute("CREATE VIRTUAL TABLE model_fts USING fts5(name, tags, trained_words, description)")
    con.execute("INSERT INTO model_fts (rowid, name) VALUES (1, 'x')")
    con.execute("DELETE FROM _migrations WHERE name = 'm006_no_fulltext_tables'")
    n = con.execute("SELECT count(*) FROM model_version").fetchone()[0]
    con.commit()
    con.close()
    assert "model_fts" in _tables_raw(tiny_registry_copy)
    assert "model_fts" not in _tables(tiny_registry_copy)
    con = sqlite3.connect(tiny_registry_copy)
    assert con.execute("SELECT count(*) FROM model_version").fetchone()[0] == n > 0
    con.close()


def _tables_raw(path) -> set[str]:
    con = sqlite3.connect(path)
    try:
        return {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    finally:
        con.close()


@pytest.mark.sqlite_only
def test_missing_registry_is_refused_not_created(tmp_path):
    missing = tmp_path / "typo.db"
    with pytest.raises(UserInputError, match="does not exist"):
        open_engine(missing)
    assert not missing.exists()


def test_foreign_keys_are_enforced(db):
    engine = open_engine(db, create=True)
    with pytest.raises(Exception, match="(?i)foreign key"), engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO model_version (id, model_id, name, base_model, family, air, trained_words, description,"
                " downloads, recommended) VALUES (1, 999, 'v', 'SD 1.5', 'sd1', 'urn:x', '[]', '', 0, '{}')"
            )
        )
    engine.dispose()


def test_migrations_build_exactly_the_tables_schema_py_declares(db):
    """m001 is frozen SQL: a column added to ``schema.py`` without a migration of its own fails here."""
    from sqlmodel import SQLModel

    from diffagent.registry import schema  # noqa: F401 - registers the tables

    engine = open_engine(db, create=True)
    with engine.connect() as conn:
        insp = inspect(conn)
        for table in SQLModel.metadata.sorted_tables:
            in_db = {c["name"]: c for c in insp.get_columns(table.name)}
            pk = set(insp.get_pk_constraint(table.name)["constrained_columns"])
            declared = {c.name: (not c.nullable, c.primary_key) for c in table.columns}
            assert set(in_db) == set(declared), (table.name, set(in_db) ^ set(declared))
            for name, (not_null, is_pk) in declared.items():
                assert (name in pk) == bool(is_pk), (table.name, name)
                assert (not in_db[name]["nullable"]) == not_null or is_pk, (table.name, name)
            indexes = {i["name"] for i in insp.get_indexes(table.name) if i["name"].startswith("ix_")}
            assert indexes == {i.name for i in table.indexes}, table.name
    engine.dispose()


def test_an_empty_database_or_unreachable_server_is_refused_with_the_fix(new_registry):
    location = new_registry("empty")
    if isinstance(location, str):  # PostgreSQL: the database exists, but holds no registry
        with pytest.raises(UserInputError, match="holds no diffagent registry.*registry import"):
            open_engine(location)
        bad = location.replace("port=", "port=1")  # no server listens there
        with pytest.raises(UserInputError, match="cannot open the registry database.*server is running"):
            open_engine(bad)
    else:
        with pytest.raises(UserInputError, match="does not exist.*registry import"):
            open_engine(location)


def test_m001_is_frozen_sql():
    import inspect

    from diffagent.registry import migrations

    assert "create_all" not in inspect.getsource(migrations)
