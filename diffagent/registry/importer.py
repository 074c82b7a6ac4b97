"""Importing into the registry: parse, upsert, then rebuild the derived tables — all in one
transaction, so an import that fails (bad line, Ctrl-C, full disk) leaves the registry as it was."""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Connection, text
from tqdm import tqdm

from diffagent.errors import ImportFailed, UserInputError
from diffagent.registry.civitai import item_to_record, iter_items
from diffagent.registry.db import open_engine
from diffagent.registry.embeddings import Embedder
from diffagent.registry.index import rebuild_vectors
from diffagent.registry.location import Location, is_url, parse_location
from diffagent.registry.prompt_kinds import refine_checkpoint_kinds
from diffagent.registry.records import ModelRecord
from diffagent.registry.stats import recompute_usage_stats, resolve_images
from diffagent.registry.writer import WriteCounts, write_records

BATCH = 500


@dataclass
class ImportReport:
    source: str
    models: int = 0
    versions: int = 0
    files: int = 0
    images: int = 0
    with_stats: int = 0
    embedded: dict[str, int] = field(default_factory=dict)
    #: checkpoint versions labelled anime by their creators' prompts (``prompt_kinds.py``)
    kinds_from_prompts: int = 0
    seconds: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        secs = ", ".join(f"{k} {v:.1f}s" for k, v in self.seconds.items())
        return (
            f"imported {self.models} models, {self.versions} versions, {self.files} files, "
            f"{self.images} sample images from {self.source}; usage stats for {self.with_stats} versions; "
            f"{self.kinds_from_prompts} checkpoints labelled anime by their creators' prompts; "
            f"embedded {self.embedded or 'nothing'} ({secs})"
        )


def finalize(conn: Connection, embedder: Embedder | None, report: ImportReport, progress: bool) -> None:
    """Rebuild what is derived from the tables: image->checkpoint links, usage stats, indexes."""
    t = time.perf_counter()
    resolve_images(conn)
    report.with_stats = recompute_usage_stats(conn)
    report.seconds["index"] = time.perf_counter() - t
    if embedder is not None:
        t = time.perf_counter()
        bars: dict[str, tqdm] = {}

        def show(kind: str, done: int, total: int) -> None:
            if not progress:
                return
            bar = bars.setdefault(kind, tqdm(total=total, desc=f"embedding {kind}", unit="text", leave=False))
            bar.update(done - bar.n)

        report.embedded = rebuild_vectors(conn, embedder, show)
        for bar in bars.values():
            bar.close()
        report.seconds["embed"] = time.perf_counter() - t
    # after the prompt vectors: anime mixes that tag themselves photorealistic, judged by their creators' prompts
    report.kinds_from_prompts = refine_checkpoint_kinds(conn)
    conn.execute(
        text(
            "INSERT INTO registry_meta VALUES ('embedder', :v) ON CONFLICT (key) DO UPDATE SET value = excluded.value"
        ),
        {"v": embedder.name if embedder else ""},
    )


def import_records(
    registry: Location,
    records: Iterable[ModelRecord],
    *,
    source: str,
    embedder: Embedder | None,
    progress: bool = False,
    create: bool = True,
    total: int | None = None,
) -> ImportReport:
    registry = parse_location(registry)
    new_file = not is_url(registry) and not Path(registry).exists()
    engine = open_engine(registry, create=create)
    report = ImportReport(source=source)
    counts = WriteCounts()
    t0 = time.perf_counter()
    try:
        with engine.begin() as conn:
            batch: list[ModelRecord] = []
            bar = tqdm(total=total, desc="importing", unit="model", disable=not progress)
            for rec in records:
                batch.append(rec)
                if len(batch) >= BATCH:
                    write_records(conn, batch, counts)
                    bar.update(len(batch))
                    batch = []
            write_records(conn, batch, counts)
            bar.update(len(batch))
            bar.close()
            report.seconds["write"] = time.perf_counter() - t0
            finalize(conn, embedder, report, progress)
    except BaseException as e:
        engine.dispose()
        if new_file:  # a failed first import leaves no empty database behind
            for suffix in ("", "-wal", "-shm", "-journal"):
                Path(f"{registry}{suffix}").unlink(missing_ok=True)
        if isinstance(e, ImportFailed):
            raise ImportFailed(f"{e}; nothing was imported, the registry is unchanged") from None
        if isinstance(e, KeyboardInterrupt):
            raise ImportFailed("import interrupted; nothing was imported, the registry is unchanged") from None
        raise
    engine.dispose()
    report.models, report.versions, report.files, report.images = (
        counts.models,
        counts.versions,
        counts.files,
        counts.images,
    )
    report.seconds["total"] = time.perf_counter() - t0
    return report


def civitai_records(path: Path, keep_images: Callable[[int], bool] | None = None) -> Iterable[ModelRecord]:
    for where, item in iter_items(path):
        rec = item_to_record(item, where)
        if keep_images is not None and not keep_images(rec.id):
            for v in rec.versions:
                v.images = []
        yield rec


def import_path(
    source: str | Path,
    registry: Location,
    *,
    embedder: Embedder | None,
    progress: bool = False,
    keep_images: Callable[[int], bool] | None = None,
    timeout: float = 60.0,
) -> ImportReport:
    """Import a Civitai JSON / JSONL(.gz) file, or an http(s) URL serving one (an API page)."""
    src = str(source)
    if src.startswith(("http://", "https://")):
        with tempfile.TemporaryDirectory() as tmp:
            dest = Path(tmp) / "page.json"
            _download_json(src, dest, timeout)
            report = import_path(dest, registry, embedder=embedder, progress=progress, keep_images=keep_images)
            report.source = src  # not the temporary file it was saved to
            return report
    path = Path(src).expanduser()
    if not path.is_file():
        raise UserInputError(f"{path} is not a file; give a Civitai .json, .jsonl or .jsonl.gz file or an URL")
    total = _count_lines(path) if progress and ".jsonl" in path.name else None
    return import_records(
        registry,
        civitai_records(path, keep_images),
        source=str(path),
        embedder=embedder,
        progress=progress,
        total=total,
    )


def _count_lines(path: Path) -> int | None:
    from diffagent.registry.civitai import _open_text

    try:
        with _open_text(path) as fh:
            return sum(1 for _ in fh)
    except (EOFError, OSError, UnicodeDecodeError, ValueError):  # damaged: the import itself says how
        return None


def _download_json(url: str, dest: Path, timeout: float) -> None:
    import httpx

    try:
        resp = httpx.get(url, timeout=timeout, follow_redirects=True)
        resp.raise_for_status()
        json.loads(resp.content)
    except httpx.HTTPError as e:
        raise ImportFailed(f"could not fetch {url}: {e}") from None
    except json.JSONDecodeError as e:
        raise ImportFailed(f"{url} did not return JSON ({e.msg})") from None
    dest.write_bytes(resp.content)
