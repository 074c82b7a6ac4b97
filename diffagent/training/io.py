"""Crash-safe files for long runs: atomic JSON, atomic directory swaps, and an append-only JSONL log.

A run killed at any moment leaves either the old or the new version of each file, and at most one
torn last line in a log, which the next run drops before appending.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from diffagent.atomic import write_text_atomic


def write_json_atomic(path: Path, data: Any, indent: int | None = 1) -> Path:
    text = json.dumps(data, indent=indent, separators=None if indent else (",", ":"))
    return write_text_atomic(path, text)


def replace_dir(path: Path, write: Callable[[Path], None]) -> Path:
    """Fill a fresh folder with ``write(tmp_dir)``, then swap it in for ``path``.

    ``rename`` cannot replace a non-empty folder, so the old one is first renamed to ``<path>.old``;
    ``resolve_dir`` falls back to that if the run dies between the two renames.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    old = path.with_name(path.name + ".old")
    try:
        write(tmp)
        if old.exists():
            shutil.rmtree(old)
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def resolve_dir(path: Path) -> Path | None:
    """``path`` if it exists, else the ``.old`` copy a crash in ``replace_dir`` left behind, else None."""
    path = Path(path)
    if path.is_dir():
        return path
    old = path.with_name(path.name + ".old")
    return old if old.is_dir() else None


class AppendLog:
    """One JSON object a line; appended and flushed record by record, so a rerun resumes."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def records(self) -> list[dict]:
        if not self.path.exists():
            return []
        out = []
        with open(self.path, encoding="utf-8") as fh:
            for line in fh:
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    break  # a torn last line from a killed run; _repair drops it
        return out

    def _repair(self) -> None:
        """Rewrite the file without a torn tail (atomically), so appends start on a clean line."""
        if not self.path.exists():
            return
        raw = self.path.read_bytes()
        good = self.records()
        if raw.count(b"\n") == len(good) and (not raw or raw.endswith(b"\n")):
            return
        write_text_atomic(self.path, "".join(json.dumps(r) + "\n" for r in good))

    @contextmanager
    def open(self) -> Iterator[Callable[[dict], None]]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._repair()
        with open(self.path, "a", encoding="utf-8") as fh:

            def write(record: dict) -> None:
                fh.write(json.dumps(record) + "\n")
                fh.flush()

            yield write
