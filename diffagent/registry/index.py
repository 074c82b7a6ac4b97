"""Sentence-embedding vectors derived from the tables (BM25 over model text is built in memory when the registry
is first searched: ``registry/lexical.py``).

They are rebuilt after every import inside the import's transaction, keyed by a hash of the text they embed, so a
re-import only embeds what changed. The SQL is the same on SQLite and PostgreSQL.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Callable

import numpy as np
from sqlalchemy import Connection, bindparam, text

from diffagent.registry.embeddings import Embedder
from diffagent.registry.writer import chunks as _chunks

#: model types that search and selection deal with (and that get vectors)
SEARCHABLE_TYPES = ("checkpoint", "lora", "locon", "embedding", "vae")
PROMPTS_PER_CHECKPOINT = 8
UPSERT_VECTOR = (
    "INSERT INTO vector (kind, owner_id, model, dim, text_hash, data)"
    " VALUES (:kind, :owner_id, :model, :dim, :h, :data) ON CONFLICT (kind, owner_id) DO UPDATE SET"
    " model = excluded.model, dim = excluded.dim, text_hash = excluded.text_hash, data = excluded.data"
)


def version_text(model_name: str, version_name: str, tags: list[str], words: list[str], description: str) -> str:
    """The text a version is embedded and matched by."""
    parts = [f"{model_name} {version_name}".strip()]
    if tags:
        parts.append(", ".join(tags))
    if words:
        parts.append(", ".join(words[:12]))
    if description:
        parts.append(description[:300])
    return ". ".join(parts)


def version_texts(conn: Connection, types: tuple[str, ...] | list[str]) -> dict[int, str]:
    """Version id -> ``version_text`` of every version of a model of one of ``types``."""
    rows = conn.execute(
        text(
            "SELECT v.id AS id, m.name AS model_name, v.name AS name, m.tags AS tags, v.trained_words AS words,"
            " m.description AS description FROM model_version v JOIN model m ON m.id = v.model_id"
            " WHERE m.type IN :types"
        ).bindparams(bindparam("types", expanding=True)),
        {"types": list(types)},
    )
    return {
        r.id: version_text(r.model_name, r.name, json.loads(r.tags), json.loads(r.words), r.description or "")
        for r in rows
    }


def _hash(s: str) -> str:
    return hashlib.blake2b(s.encode(), digest_size=12).hexdigest()


def _store(
    conn: Connection,
    kind: str,
    items: dict[int, str],
    embedder: Embedder,
    progress: Callable[[int, int], None] | None,
    batch: int = 256,
) -> int:
    """Embed the texts whose hash changed and store them; drop vectors of removed owners."""
    have = dict(conn.execute(text("SELECT owner_id, text_hash FROM vector WHERE kind=:k"), {"k": kind}).all())
    stale = set(have) - set(items)
    for chunk in _chunks(sorted(stale), 900):
        conn.execute(
            text("DELETE FROM vector WHERE kind=:k AND owner_id IN :ids").bindparams(bindparam("ids", expanding=True)),
            {"k": kind, "ids": list(chunk)},
        )
    todo = [(oid, t, _hash(t)) for oid, t in items.items() if have.get(oid) != _hash(t)]
    done = 0
    for chunk in _chunks(todo, batch):
        vecs = embedder.encode([t for _, t, _ in chunk]).astype(np.float16)
        conn.execute(
            text(UPSERT_VECTOR),
            [
                {
                    "kind": kind,
                    "owner_id": oid,
                    "model": embedder.name,
                    "dim": vecs.shape[1],
                    "h": h,
                    "data": vecs[i].tobytes(),
                }
                for i, (oid, _, h) in enumerate(chunk)
            ],
        )
        done += len(chunk)
        if progress:
            progress(done, len(todo))
    return len(todo)


def rebuild_vectors(
    conn: Connection, embedder: Embedder, progress: Callable[[str, int, int], None] | None = None
) -> dict[str, int]:
    """Embed model texts (kind 'version') and, per checkpoint, a sample of creators' SFW prompts
    (kind 'prompts': the mean of their embeddings)."""
    items = version_texts(conn, SEARCHABLE_TYPES)
    n_versions = _store(conn, "version", items, embedder, progress and (lambda d, t: progress("models", d, t)))

    # prompts: a deterministic sample per checkpoint, embedded one prompt per row, then averaged
    prompts: dict[int, list[str]] = defaultdict(list)
    for vid, prompt in conn.execute(
        text(
            "SELECT version_id, prompt FROM sample_image WHERE version_id IS NOT NULL AND NOT nsfw"
            " AND length(prompt) > 0 ORDER BY version_id, id"
        )
    ):
        if len(prompts[vid]) < PROMPTS_PER_CHECKPOINT:
            prompts[vid].append(prompt[:400])
    joined = {vid: "\n".join(ps) for vid, ps in prompts.items()}
    have = dict(conn.execute(text("SELECT owner_id, text_hash FROM vector WHERE kind='prompts'")).all())
    changed = {vid: j for vid, j in joined.items() if have.get(vid) != _hash(j)}
    stale = set(have) - set(joined)
    for chunk in _chunks(sorted(stale), 900):
        conn.execute(
            text("DELETE FROM vector WHERE kind='prompts' AND owner_id IN :ids").bindparams(
                bindparam("ids", expanding=True)
            ),
            {"ids": list(chunk)},
        )
    # creators reuse prompts (a quarter of the dump's sampled prompts are repeats): each distinct one is embedded once
    unique = list(dict.fromkeys(p for vid in changed for p in prompts[vid]))
    vec_of: dict[str, np.ndarray] = {}
    for i, chunk in enumerate(_chunks(unique, 512)):
        vec_of.update(zip(chunk, embedder.encode(list(chunk)), strict=True))
        if progress:
            progress("prompts", min((i + 1) * 512, len(unique)), len(unique))
    sums: dict[int, np.ndarray] = {}
    for vid in changed:
        for p in prompts[vid]:
            sums[vid] = sums.get(vid, 0) + vec_of[p]
    if sums:
        conn.execute(
            text(UPSERT_VECTOR),
            [
                {
                    "kind": "prompts",
                    "owner_id": vid,
                    "model": embedder.name,
                    "dim": len(v),
                    "h": _hash(joined[vid]),
                    "data": (v / (np.linalg.norm(v) or 1.0)).astype(np.float16).tobytes(),
                }
                for vid, v in sums.items()
            ],
        )
    return {"versions": n_versions, "prompt_sets": len(sums)}
