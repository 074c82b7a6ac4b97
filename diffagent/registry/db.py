"""Opening a registry database (a SQLite file or a PostgreSQL URL): engine, pragmas, migrations."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine, create_engine, event, inspect
from sqlalchemy.exc import OperationalError

from diffagent.errors import MissingDependency, UserInputError
from diffagent.registry.location import Location, display, is_url, parse_location, sqlalchemy_url
from diffagent.registry.migrations import migrate

_MISSING = (
    "build one with `diffagent registry build-default` or `diffagent registry import PATH --registry {where}`"
    ", or copy one into it with `diffagent registry copy SOURCE {where}`"
)


def _pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def open_engine(location: Location, *, create: bool = False) -> Engine:
    """An engine on the registry at ``location``, migrated to the current schema.

    ``create=False`` refuses a missing file, or a database that holds no registry (a typo in --registry should not
    silently make an empty one).
    """
    location = parse_location(location)
    if is_url(location):
        return _open_postgres(str(location), create=create)
    path = Path(location)
    if not path.exists():
        if not create:
            raise UserInputError(f"registry {path} does not exist; " + _MISSING.format(where=path))
        path.parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(f"sqlite:///{path}", connect_args={"check_same_thread": False})
    event.listen(engine, "connect", _pragmas)
    with engine.begin() as conn:
        migrate(conn)
    return engine


def _open_postgres(url: str, *, create: bool) -> Engine:
    try:
        import psycopg  # noqa: F401
    except ImportError as e:
        raise MissingDependency("psycopg", "postgres") from e
    engine = create_engine(sqlalchemy_url(url), pool_pre_ping=True)
    try:
        with engine.begin() as conn:
            if not create and not inspect(conn).has_table("_migrations"):
                raise UserInputError(
                    f"the database {display(url)} holds no diffagent registry; " + _MISSING.format(where="URL")
                )
            migrate(conn)
    except OperationalError as e:
        engine.dispose()
        reason = str(e.orig).strip().splitlines()[0] if e.orig else str(e)
        raise UserInputError(
            f"cannot open the registry database {display(url)}: {reason}; check the URL (user, "
            "host, port, database name) and that the server is running"
        ) from None
    except BaseException:
        engine.dispose()
        raise
    return engine
