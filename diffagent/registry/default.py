"""The default registry: ``registry.db`` at the top of a checkout, built from the curated, human-
readable ``default_models.toml`` by ``diffagent registry build-default``."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from diffagent.atomic import write_atomic
from diffagent.registry.embeddings import Embedder
from diffagent.registry.importer import ImportReport, import_records

SOURCE = Path(__file__).with_name("default_models.toml")

#: tables whose rows define the registry's content (``vector`` is compared with a tolerance)
CONTENT_TABLES = ("model", "model_version", "model_file", "usage_stats", "sample_image")


def build_default(
    dest: Path, *, source: Path = SOURCE, embedder: Embedder | None = None, progress: bool = False
) -> ImportReport:
    """Build the registry from ``source`` into a temporary file, then move it over ``dest``."""
    from diffagent.registry.default_source import load_default_source

    records = load_default_source(source)
    reports = []

    def build(tmp: Path) -> None:
        tmp.unlink()  # the importer creates the database itself
        reports.append(
            import_records(tmp, records, source=str(source), embedder=embedder or Embedder(), progress=progress)
        )
        con = sqlite3.connect(tmp)
        con.execute("VACUUM")
        con.close()

    write_atomic(Path(dest), build)
    reports[0].source = str(source)
    return reports[0]


def content_rows(db) -> dict[str, list[tuple]]:
    """The registry's content (a file or a database), table by table, in a canonical order (for the rebuild
    check and the import tests)."""
    from sqlalchemy import text

    from diffagent.registry.db import open_engine

    engine = open_engine(db)
    try:
        with engine.connect() as conn:
            return {
                t: sorted((tuple(r) for r in conn.execute(text(f"SELECT * FROM {t}"))), key=repr)
                for t in CONTENT_TABLES
            }
    finally:
        engine.dispose()
