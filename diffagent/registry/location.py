"""Where a registry lives: a SQLite file (a path) or a PostgreSQL database (a ``postgresql://`` URL).

Everything that names a registry (``--registry``, ``DIFFAGENT_REGISTRY``, ``Registry.open``) goes through
``parse_location``: a URL stays a string, anything else is a path. The indexes derived from a registry are cached
beside a file, and under the data folder for a database (``cache_base``); messages show a URL without its password.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

#: URL schemes of a PostgreSQL registry (``postgresql+psycopg`` is SQLAlchemy's name for the same driver)
POSTGRES_SCHEMES = ("postgresql://", "postgres://", "postgresql+psycopg://")

Location = Path | str


def is_url(location: Location) -> bool:
    return isinstance(location, str) and location.lower().startswith(POSTGRES_SCHEMES)


def parse_location(value: Location) -> Location:
    """A PostgreSQL URL as given, or an expanded path. Other URL schemes are refused with what is accepted."""
    if isinstance(value, Path):
        return value.expanduser()
    text = str(value).strip()
    if is_url(text):
        return text
    scheme = re.match(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://", text)
    if scheme:
        raise ValueError(
            f"a registry is a SQLite file path or a PostgreSQL URL (postgresql://user@host/db), "
            f"not a {scheme.group(1)}:// URL"
        )
    return Path(text).expanduser()


def sqlalchemy_url(location: str) -> str:
    """The URL with the psycopg 3 driver named (SQLAlchemy's bare ``postgresql://`` means psycopg2)."""
    rest = location.split("://", 1)[1]
    return f"postgresql+psycopg://{rest}"


def display(location: Location) -> str:
    """The location for messages and reports: a URL without its password."""
    if not is_url(location):
        return str(location)
    from sqlalchemy.engine import make_url

    return make_url(sqlalchemy_url(str(location))).set(drivername="postgresql").render_as_string(hide_password=True)


def cache_base(location: Location) -> Path:
    """The prefix of a registry's cache files (``<prefix>.bm25.npz``, ...): the file itself, or for a database a
    name under ``$DIFFAGENT_DATA_DIR/cache`` made from its URL without the password."""
    if not is_url(location):
        return Path(location)
    from diffagent.settings import _default_data_dir

    shown = display(location)
    slug = re.sub(r"[^A-Za-z0-9]+", "_", shown.split("://", 1)[1]).strip("_")[:60]
    digest = hashlib.sha256(shown.encode()).hexdigest()[:12]
    data_dir = Path(os.environ.get("DIFFAGENT_DATA_DIR") or _default_data_dir())
    folder = data_dir / "cache"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"pg_{slug}_{digest}"


def identity(location: Location) -> str:
    """A name that stays the same while the registry does not move: a resolved path, or the URL shown."""
    return display(location) if is_url(location) else str(Path(location).resolve())
