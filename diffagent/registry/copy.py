"""``diffagent registry copy SOURCE DEST``: move a registry between SQLite and PostgreSQL, vectors included.

Importing the Civitai dump again would embed 26,000 model cards and 16,000 prompts (about 14 minutes on two cores);
a copy moves the rows as they are. The destination is a new SQLite file or a PostgreSQL database that holds no
registry data yet; it is written in one transaction (a file is built beside its final name and moved into place),
so a failed copy leaves nothing behind. Columns are read by name from the source and written by name, with values
converted to the destination's types where the two databases differ (SQLite keeps booleans as 0 / 1).
"""

from __future__ import annotations

import time
from pathlib import Path

from sqlalchemy import Boolean, Connection, inspect, text
from tqdm import tqdm

from diffagent.errors import UserInputError
from diffagent.registry.db import open_engine
from diffagent.registry.location import Location, display, identity, is_url, parse_location

#: the registry's tables, parents before children (foreign keys are checked as rows arrive)
TABLES = (
    "model",
    "model_version",
    "model_file",
    "sample_image",
    "usage_stats",
    "model_kind",
    "vector",
    "registry_meta",
)
BATCH = 2000


def _columns(conn: Connection, table: str) -> dict[str, object]:
    return {c["name"]: c["type"] for c in inspect(conn).get_columns(table)}


def _copy_table(src: Connection, dst: Connection, table: str, bar: tqdm | None) -> int:
    theirs, ours = _columns(src, table), _columns(dst, table)
    missing = sorted(set(ours) - set(theirs))
    if missing:
        raise UserInputError(
            f"the source's table {table} lacks the columns {', '.join(missing)}; open it once "
            "with this version of diffagent (it migrates on open) and copy again"
        )
    cols = list(ours)
    booleans = {c for c, t in ours.items() if isinstance(t, Boolean)}
    names = ", ".join(f'"{c}"' for c in cols)
    insert = text(f"INSERT INTO {table} ({names}) VALUES ({', '.join(':' + c for c in cols)})")
    rows = src.execution_options(stream_results=True, yield_per=BATCH).execute(text(f"SELECT {names} FROM {table}"))
    n = 0
    for part in rows.partitions(BATCH):
        params = [
            {c: (bool(v) if c in booleans and v is not None else v) for c, v in zip(cols, r, strict=True)} for r in part
        ]
        dst.execute(insert, params)
        n += len(params)
        if bar is not None:
            bar.update(len(params))
    return n


def _write(source: Location, dest: Location, progress: bool) -> dict[str, int]:
    src_engine = open_engine(source)
    dst_engine = open_engine(dest, create=True)
    try:
        with src_engine.connect() as src, dst_engine.begin() as dst:
            held = dst.execute(text("SELECT count(*) FROM model")).scalar()
            if held:
                raise UserInputError(
                    f"{display(dest)} already holds {held} models; copy into a new SQLite file or "
                    "an empty database (or import into this one with `diffagent registry import`)"
                )
            total = sum(src.execute(text(f"SELECT count(*) FROM {t}")).scalar() for t in TABLES)
            bar = tqdm(total=total, desc="copying", unit="row", disable=not progress)
            counts = {t: _copy_table(src, dst, t, bar) for t in TABLES}
            bar.close()
    finally:
        src_engine.dispose()
        dst_engine.dispose()
    return counts


def copy_registry(source: Location, dest: Location, *, progress: bool = False) -> dict:
    """Copy every row of the registry at ``source`` into ``dest``; returns the rows copied per table and the
    seconds it took."""
    source, dest = parse_location(source), parse_location(dest)
    if identity(source) == identity(dest):
        raise UserInputError("the source and the destination are the same registry")
    t0 = time.perf_counter()
    if is_url(dest):
        counts = _write(source, dest, progress)
    else:
        path = Path(dest)
        if path.exists():
            raise UserInputError(f"{path} already exists; copy into a new file (or delete it first)")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.copying")
        tmp.unlink(missing_ok=True)
        try:
            counts = _write(source, tmp, progress)
            tmp.replace(path)
        finally:
            tmp.unlink(missing_ok=True)
    return {
        "source": display(source),
        "dest": display(dest),
        "rows": counts,
        "seconds": round(time.perf_counter() - t0, 1),
    }
