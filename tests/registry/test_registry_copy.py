"""`registry copy` and the registry on PostgreSQL: rows, vectors and search results survive a copy between SQLite and
PostgreSQL unchanged; a copy never overwrites a registry and a failed one leaves nothing; locations parse and print
without passwords."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from registry_sql import holds_registry, sql_rows

from diffagent.errors import UserInputError
from diffagent.registry import copy as copy_module
from diffagent.registry.copy import copy_registry
from diffagent.registry.default import content_rows
from diffagent.registry.location import cache_base, display, is_url, parse_location
from diffagent.registry.store import Registry

QUERIES = [
    "watercolor landscape with a lake",
    "portrait photo of an old fisherman",
    "anime girl, school uniform",
    "film grain",
    "pixel art castle",
]


def _vectors(db) -> dict:
    return {
        (k, o): np.frombuffer(bytes(d), dtype=np.float16)
        for k, o, d in sql_rows(db, "SELECT kind, owner_id, data FROM vector")
    }


def _numbers(rows: list[tuple]) -> list[tuple]:
    """SQLite keeps booleans as 0 / 1: compare them as numbers."""
    return [tuple(int(v) if isinstance(v, bool) else v for v in r) for r in rows]


def _same_content(a, b) -> None:
    ours, theirs = content_rows(a), content_rows(b)
    for table in ours:
        assert _numbers(ours[table]) == _numbers(theirs[table]), table
    va, vb = _vectors(a), _vectors(b)
    assert va.keys() == vb.keys() and all(np.array_equal(va[k], vb[k]) for k in va)
    assert sql_rows(a, "SELECT * FROM model_kind ORDER BY version_id") == sql_rows(
        b, "SELECT * FROM model_kind ORDER BY version_id"
    )


def _searches(db, embedder) -> list:
    reg = Registry.open(db, embedder=embedder, allow_nsfw=True)
    try:
        return [[(h.version.id, round(h.score, 5)) for h in reg.search(q, limit=8)] for q in QUERIES]
    finally:
        reg.close()


def test_a_copy_holds_the_same_rows_vectors_and_search_results(tiny_registry_path, new_registry, embedder):
    dest = new_registry("copy")
    report = copy_registry(tiny_registry_path, dest)
    assert report["rows"]["model"] == 11 and report["rows"]["vector"] > 11
    _same_content(tiny_registry_path, dest)
    assert _searches(dest, embedder) == _searches(tiny_registry_path, embedder)


def test_sqlite_to_postgresql_and_back(tiny_registry_path, postgres_url, tmp_path, embedder):
    """Across the two databases (in either test run): the same rows, vectors, search results, and selection."""
    import psycopg

    from diffagent.agent.options import SelectOptions
    from diffagent.agent.selector import Selector
    from diffagent.settings import Settings

    sqlite_db = tmp_path / "start.db"
    copy_registry(tiny_registry_path, sqlite_db)
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute('CREATE DATABASE "roundtrip"')
    pg = postgres_url.replace("@/postgres?", "@/roundtrip?")
    copy_registry(sqlite_db, pg)
    back = tmp_path / "back.db"
    copy_registry(pg, back)
    _same_content(sqlite_db, pg)
    _same_content(sqlite_db, back)
    assert _searches(pg, embedder) == _searches(sqlite_db, embedder)

    def select(db) -> list[dict]:
        settings = Settings(registry=db, selector="retrieval", data_dir=tmp_path / "data")
        selector = Selector(Registry.from_settings(settings), settings)
        return [selector.select(q, SelectOptions(seed=1)).model_dump() for q in QUERIES]

    assert select(pg) == select(sqlite_db)


def test_a_copy_never_overwrites_a_registry(tiny_registry_path, tiny_registry_copy, tmp_path):
    with pytest.raises(UserInputError, match="already (holds 11 models|exists)"):
        copy_registry(tiny_registry_path, tiny_registry_copy)
    existing = tmp_path / "there.db"
    existing.write_bytes(b"")
    with pytest.raises(UserInputError, match="already exists"):
        copy_registry(tiny_registry_path, existing)
    with pytest.raises(UserInputError, match="the same registry"):
        copy_registry(tiny_registry_path, tiny_registry_path)
    if not isinstance(tiny_registry_path, str):  # the same file by another spelling of its path
        other = tiny_registry_path.parent / "sub" / ".." / tiny_registry_path.name
        with pytest.raises(UserInputError, match="the same registry"):
            copy_registry(tiny_registry_path, other)


def test_a_failed_copy_leaves_nothing(tiny_registry_path, new_registry, monkeypatch):
    dest = new_registry("failed")
    real = copy_module._copy_table

    def failing(src, dst, table, bar):
        if table == "vector":
            raise RuntimeError("disk full")
        return real(src, dst, table, bar)

    monkeypatch.setattr(copy_module, "_copy_table", failing)
    with pytest.raises(RuntimeError, match="disk full"):
        copy_registry(tiny_registry_path, dest)
    if is_url(dest):  # migrated before the copy began, and empty: the rows went back with the transaction
        assert sql_rows(dest, "SELECT count(*) FROM model") == [(0,)]
    else:
        assert not holds_registry(dest) and not list(Path(dest).parent.iterdir())  # no temporary file either


def test_locations_parse_and_print_without_passwords(tmp_path, monkeypatch):
    url = "postgresql://me:s3cret@db.example:5433/models"
    assert parse_location(url) == url and is_url(url)
    assert parse_location("~/r.db") == Path.home() / "r.db"
    assert display(url) == "postgresql://me:***@db.example:5433/models"
    with pytest.raises(ValueError, match="SQLite file path or a PostgreSQL URL"):
        parse_location("mysql://me@host/db")
    monkeypatch.setenv("DIFFAGENT_DATA_DIR", str(tmp_path / "data"))
    base = cache_base(url)
    assert base.parent == tmp_path / "data" / "cache" and "s3cret" not in str(base)
    assert cache_base(tmp_path / "r.db") == tmp_path / "r.db"


def test_settings_and_the_cli_keep_a_url_a_url(tmp_path, capsys):
    from diffagent.cli import main
    from diffagent.settings import Settings

    url = "postgresql://me@/models?host=/run/pg"
    assert Settings(registry=url).registry == url
    assert Settings(registry=str(tmp_path / "r.db")).registry == tmp_path / "r.db"
    with pytest.raises(SystemExit) as exit_:  # argparse refuses it, naming what a registry can be
        main(["registry", "stats", "--registry", "mysql://x/y"])
    assert exit_.value.code == 2 and "or a PostgreSQL URL" in capsys.readouterr().err


def test_a_registry_on_postgresql_survives_a_server_restart(tiny_registry_path, postgres_server, embedder):
    """A serving front's connections die with the server; the next lookup reconnects instead of failing."""
    import psycopg

    with psycopg.connect(postgres_server.url, autocommit=True) as conn:
        conn.execute('CREATE DATABASE "restarted"')
    pg = postgres_server.url.replace("@/postgres?", "@/restarted?")
    copy_registry(tiny_registry_path, pg)
    reg = Registry.open(pg, embedder=embedder)
    try:
        before = reg.search("watercolor landscape", limit=3)
        postgres_server.restart()
        assert reg.version(before[0].version.id).name == before[0].version.name
        assert [h.version.id for h in reg.search("watercolor landscape", limit=3)] == [h.version.id for h in before]
    finally:
        reg.close()
