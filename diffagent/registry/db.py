"""Opening a registry database: engine, pragmas, migrations."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine, create_engine, event

from diffagent.errors import UserInputError
from diffagent.registry.migrations import migrate


def _pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def open_engine(path: Path | str, *, create: bool = False) -> Engine:
    """An engine on the registry at ``path``, migrated to the current schema.

    ``create=False`` refuses a missing file (a typo in --registry should not silently make an empty DB).
    """
    path = Path(path).expanduser()
    if not path.exists():
        if not create:
            raise UserInputError(
                f"registry {path} does not exist; build one with `diffagent registry build-default` "
                "or `diffagent registry import PATH --registry PATH`"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(f"sqlite:///{path}", connect_args={"check_same_thread": False})
    event.listen(engine, "connect", _pragmas)
    with engine.begin() as conn:
        migrate(conn)
    return engine
