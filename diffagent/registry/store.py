"""``Registry``: read access to the model registry — lookups, weight locations and hybrid search.

Search fuses six signals, each scaled to [0, 1]:
  lexical   FTS5 BM25 over name, tags, trigger words and description,
  semantic  cosine between the query and the model text (all-MiniLM-L6-v2),
  prompts   cosine between the query and the mean of creators' sample prompts (checkpoints),
  knn       TF-IDF nearest creators' prompts voting for the checkpoint they used (``knn.py``),
  creators  the checkpoints used by the authors of add-ons named by trigger word (``creators.py``),
  prior     log-popularity (downloads),
after hard filters (type, base ecosystem, NSFW policy, min downloads), and with a card vector the ``card`` signal
(``agent/cards.py``). The columns and vector matrices it fuses over are ``search_index.SearchIndex``; the votes
come from the side indexes built lazily beside the database (``lexical.py``, ``knn.py``, ``creators.py``,
``triggers.py``).

What it returns is defined in ``info.py``; query text helpers are in ``query.py`` (both re-exported here).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import bindparam, text

from diffagent.apicall import ModelRef
from diffagent.blas import one_blas_thread
from diffagent.errors import NotFoundError
from diffagent.families import Family
from diffagent.registry.db import open_engine
from diffagent.registry.embeddings import Embedder
from diffagent.registry.info import FileInfo, SearchHit, UsageInfo, VersionInfo, WeightSource
from diffagent.registry.location import Location, display, is_url, parse_location
from diffagent.registry.query import STOPWORDS, contains_words, query_words
from diffagent.registry.search_index import SearchIndex
from diffagent.registry.writer import chunks

__all__ = [
    "STOPWORDS",
    "FileInfo",
    "Registry",
    "SearchHit",
    "UsageInfo",
    "VersionInfo",
    "WeightSource",
    "contains_words",
    "query_words",
]


class Registry:
    """Open with ``Registry.open(path)``. Thread-safe for reads."""

    WEIGHTS = {"lexical": 0.10, "semantic": 0.40, "prompts": 0.20, "knn": 1.0, "creators": 0.5, "prior": 0.05}

    def __init__(self, path: Location, *, allow_nsfw: bool = False, embedder: Embedder | None = None):
        #: a SQLite file's path, or a PostgreSQL URL (``registry/location.py``); ``where`` for messages
        self.path = parse_location(path)
        self.allow_nsfw = allow_nsfw
        self.engine = open_engine(self.path)
        self.embedder = embedder or Embedder()
        self._index: SearchIndex | None = None
        self._prompt_index = None
        self._creator_index = None
        self._trigger_index = None
        self._lexical_index = None
        self._trigger_use = None
        self._addon_cache: dict[tuple[str, ...], dict[str, VersionInfo]] = {}
        self._card_spaces: dict[str, np.ndarray] = {}  # two-tower encoder digest -> card matrix (index rows)
        self._lock = threading.Lock()

    @classmethod
    def open(cls, path: Location, *, allow_nsfw: bool = False, embedder: Embedder | None = None) -> Registry:
        return cls(path, allow_nsfw=allow_nsfw, embedder=embedder)

    @classmethod
    def from_settings(cls, settings, path: Location | None = None) -> Registry:
        """The registry as every command and tool opens it: ``settings.registry`` (or ``path``), the NSFW policy,
        and queries embedded by the configured embedder (``DIFFAGENT_EMBEDDER``), the model its vectors were
        built with. Opening it any other way would search a registry built with another embedder without
        its vectors."""
        return cls(path or settings.registry, allow_nsfw=settings.allow_nsfw, embedder=Embedder(settings.embedder))

    def close(self) -> None:
        self.engine.dispose()

    @property
    def where(self) -> str:
        """The registry's location for messages and reports (a URL without its password)."""
        return display(self.path)

    def fingerprint(self) -> list:
        """Changes when the registry's content does (caches of features computed from it are keyed by it): a
        file's size and modification time, a database's row counts and largest ids."""
        if not is_url(self.path):
            st = Path(self.path).stat()
            return [st.st_size, st.st_mtime_ns]
        with self.engine.connect() as conn:
            return [
                list(conn.execute(text(f"SELECT count(*), coalesce(max({col}), 0) FROM {table}")).one())
                for table, col in (
                    ("model_version", "id"),
                    ("sample_image", "id"),
                    ("vector", "owner_id"),
                    ("model_kind", "version_id"),
                )
            ]

    # ----------------------------------------------------------------------------- lookups
    #: the columns of a ``VersionInfo``, each labelled with its field name (rows are read by name)
    _VERSION_SQL = (
        "SELECT v.id AS id, v.model_id AS model_id, v.name AS name, m.name AS model_name, m.slug AS slug,"
        " m.type AS type, v.base_model AS base_model, v.family AS family, v.air AS air,"
        " v.trained_words AS trained_words, m.tags AS tags, m.description AS description, m.creator AS creator,"
        " m.nsfw AS nsfw, m.downloads AS downloads, m.rating AS rating, v.recommended AS recommended,"
        " v.hf_repo AS hf_repo, v.hf_file AS hf_file, v.download_url AS download_url, v.local_path AS local_path,"
        " k.kinds AS kinds, k.concepts AS concepts"
        " FROM model_version v JOIN model m ON m.id = v.model_id LEFT JOIN model_kind k ON k.version_id = v.id"
    )
    _JSON_FIELDS = {"trained_words": "[]", "tags": "[]", "recommended": "{}", "kinds": "[]", "concepts": "[]"}

    @classmethod
    def _row_to_info(cls, r) -> VersionInfo:
        row = dict(r._mapping)
        for key, empty in cls._JSON_FIELDS.items():
            row[key] = json.loads(row[key] or empty)
        row.update(
            family=Family(row["family"]),
            description=row["description"] or "",
            nsfw=bool(row["nsfw"]),
            downloads=row["downloads"] or 0,
        )
        return VersionInfo(**row)

    def versions(self, ids: list[int]) -> dict[int, VersionInfo]:
        """Light lookups (no files, no usage) for many ids at once."""
        if not ids:
            return {}
        out: dict[int, VersionInfo] = {}
        with self.engine.connect() as conn:
            query = text(f"{self._VERSION_SQL} WHERE v.id IN :ids").bindparams(bindparam("ids", expanding=True))
            for part in chunks(ids, 900):
                for r in conn.execute(query, {"ids": [int(x) for x in part]}):
                    out[r.id] = self._row_to_info(r)
        return out

    def version(self, version_id: int, *, with_files: bool = True) -> VersionInfo:
        with self.engine.connect() as conn:
            r = conn.execute(text(f"{self._VERSION_SQL} WHERE v.id = :id"), {"id": int(version_id)}).first()
            if r is None:
                raise NotFoundError(
                    f"unknown model id {version_id}; call search_models (CLI: diffagent registry search) "
                    "to find registry ids"
                )
            info = self._row_to_info(r)
            if with_files:
                info.files = [
                    FileInfo(
                        id=f[0],
                        name=f[1],
                        kind=f[2],
                        size_kb=f[3],
                        format=f[4],
                        fp=f[5],
                        sha256=f[6],
                        autov2=f[7],
                        download_url=f[8],
                        primary=bool(f[9]),
                    )
                    for f in conn.execute(
                        text(
                            'SELECT id, name, kind, size_kb, format, fp, sha256, autov2, download_url, "primary"'
                            ' FROM model_file WHERE version_id = :id ORDER BY "primary" DESC, id'
                        ),
                        {"id": int(version_id)},
                    )
                ]
            info.usage = self.usage(version_id, conn=conn)
        return info

    def usage(self, version_id: int, *, conn=None) -> UsageInfo | None:
        sql = text(
            "SELECT n_images, samplers, steps, cfg_scale, sizes, clip_skip, negative_prompt, loras,"
            " lora_weight FROM usage_stats WHERE version_id = :id"
        )
        if conn is None:
            with self.engine.connect() as c:
                r = c.execute(sql, {"id": int(version_id)}).first()
        else:
            r = conn.execute(sql, {"id": int(version_id)}).first()
        if r is None:
            return None
        row = dict(r._mapping)
        for key in ("samplers", "steps", "cfg_scale", "sizes", "clip_skip", "loras"):
            row[key] = json.loads(row[key])
        return UsageInfo(**row)

    def model_ref(self, version_id: int) -> ModelRef:
        return self.version(version_id, with_files=False).ref()

    def version_by_slug(self, slug: str) -> VersionInfo | None:
        """The first version of the model page with this slug (curated models have one), or None."""
        with self.engine.connect() as conn:
            vid = conn.execute(
                text(
                    "SELECT v.id FROM model_version v JOIN model m ON m.id = v.model_id"
                    " WHERE m.slug = :slug ORDER BY v.id LIMIT 1"
                ),
                {"slug": slug},
            ).scalar()
        return None if vid is None else self.version(int(vid))

    def weight_source(self, version_id: int) -> WeightSource:
        v = self.version(version_id)
        model_files = [f for f in v.files if f.kind in ("Model", "Pruned Model")] or v.files
        f = model_files[0] if model_files else None
        return WeightSource(
            version_id=v.id,
            air=v.air,
            name=v.display_name,
            type=v.type,
            family=v.family,
            local_path=v.local_path,
            hf_repo=v.hf_repo,
            hf_file=v.hf_file,
            download_url=(f.download_url if f and f.download_url else v.download_url),
            sha256=(f.sha256.upper() if f and f.sha256 else None),
            filename=(f.name if f else v.hf_file),
            format=(f.format if f else None),
        )

    def stats(self) -> dict[str, Any]:
        with self.engine.connect() as conn:
            by_type = dict(conn.execute(text("SELECT type, count(*) FROM model GROUP BY type ORDER BY 2 DESC")).all())
            by_family = dict(
                conn.execute(text("SELECT family, count(*) FROM model_version GROUP BY family ORDER BY 2 DESC")).all()
            )
            one = lambda sql: conn.execute(text(sql)).scalar()  # noqa: E731
            return {
                "path": self.where,
                "models": one("SELECT count(*) FROM model"),
                "versions": one("SELECT count(*) FROM model_version"),
                "files": one("SELECT count(*) FROM model_file"),
                "nsfw_models": one("SELECT count(*) FROM model WHERE nsfw"),
                "sample_images": one("SELECT count(*) FROM sample_image"),
                "resolved_images": one("SELECT count(*) FROM sample_image WHERE version_id IS NOT NULL"),
                "versions_with_usage_stats": one("SELECT count(*) FROM usage_stats"),
                "vectors": one("SELECT count(*) FROM vector"),
                "models_by_type": by_type,
                "versions_by_family": by_family,
            }

    # ----------------------------------------------------------------------------- search
    def _load_index(self) -> SearchIndex:
        with self._lock:
            if self._index is None:
                with self.engine.connect() as conn:
                    self._index = SearchIndex.load(conn, self.embedder, where=self.where)
            return self._index

    def warm(self) -> None:
        """Load the search index and the embedding model now (servers call this at start-up)."""
        self._load_index()
        self.embedder.encode_query("warm up")  # the request path's encoder (numpy where the folder allows)
        self.prompt_neighbours("warm up")
        self._creators()
        self._triggers()
        self._lexical()
        self.trigger_use(0)

    def lexical_scores(self, query: str, limit: int = 400) -> dict[int, float]:
        """BM25 over model text (FTS5's, computed in memory: ``registry/lexical.py``), scaled to [0, 1] by the
        best match; the ``limit`` best versions."""
        words = query_words(query)
        return self._lexical().top(words, limit) if words else {}

    def _lexical(self):
        from diffagent.registry.lexical import load_or_build

        with self._lock:
            if self._lexical_index is None:
                self._lexical_index = load_or_build(self.engine, self.path)
            return self._lexical_index

    def trigger_matches(
        self, query: str, types: tuple[str, ...] = ("lora", "locon"), limit: int = 50
    ) -> dict[int, float]:
        """Add-ons whose trigger words appear verbatim in ``query`` (creators type them to activate a
        LoRA), scored by the longest matched trigger's length (``triggers.TriggerIndex.matches``), at most
        ``limit``. An in-memory lookup (well under a millisecond), so it is not memoised."""
        out = self._triggers().matches(query, types)
        if len(out) > limit:  # the longest (most specific) phrases first
            out = dict(sorted(out.items(), key=lambda kv: (-kv[1], kv[0]))[:limit])
        return out

    def trigger_use(self, version_id: int) -> float | None:
        """The share of creators' sample prompts matching this LoRA's trigger words whose image used the LoRA
        (``triggers.TriggerUse``), or None where they typed them too rarely to tell (or there are no images)."""
        from diffagent.registry.triggers import load_or_build_use

        index = self._triggers()
        with self._lock:
            if self._trigger_use is None:
                self._trigger_use = load_or_build_use(self.engine, self.path, index)
            return self._trigger_use.precision(int(version_id))

    def _triggers(self):
        from diffagent.registry.creators import ADDON_TYPES
        from diffagent.registry.triggers import TriggerIndex

        with self._lock:
            if self._trigger_index is None:
                with self.engine.connect() as conn:
                    self._trigger_index = TriggerIndex.build(conn, ADDON_TYPES)
            return self._trigger_index

    def prompt_neighbours(self, query: str, k: int = 20, exclude_page: int | None = None) -> dict[int, float]:
        """Checkpoints whose creators wrote prompts like ``query`` (TF-IDF kNN vote, SFW prompts only),
        scaled to [0, 1]. See ``diffagent.registry.knn``. ``exclude_page`` ignores one model page's images."""
        return self._prompts().votes(query, k=k, exclude_page=exclude_page)

    def prompt_word_share(self, word: str) -> float:
        """The share of the registry's creator prompts that contain ``word`` (0 without sample images)."""
        return self._prompts().document_share(word)

    def lora_neighbours(self, query: str, k: int = 20, exclude_page: int | None = None) -> dict[int, float]:
        """LoRAs creators used in prompts like ``query``: share of the neighbours' similarity mass."""
        return self._prompts().lora_votes(query, k=k, exclude_page=exclude_page)

    def creator_votes(self, query: str, exclude_page: int | None = None) -> dict[int, float]:
        """Checkpoints the creators of the add-ons whose trigger words ``query`` contains work with, in
        [0, 1]. See ``diffagent.registry.creators``."""
        from diffagent.registry.creators import ADDON_TYPES

        matches = self.trigger_matches(query, types=ADDON_TYPES)
        return self._creators().votes(matches, exclude_page=exclude_page) if matches else {}

    def _creators(self):
        from diffagent.registry.creators import CreatorIndex

        with self._lock:
            if self._creator_index is None:
                self._creator_index = CreatorIndex.build(self.engine)
            return self._creator_index

    def _prompts(self):
        from diffagent.registry.knn import load_or_build

        with self._lock:
            if self._prompt_index is None:
                self._prompt_index = load_or_build(self.engine, self.path)
            return self._prompt_index

    def search(
        self,
        query: str,
        *,
        types: list[str] | None = None,
        base: set[str] | None = None,
        min_downloads: int = 0,
        limit: int = 20,
        allow_nsfw: bool | None = None,
        weights: dict[str, float] | None = None,
        query_vector: np.ndarray | None = None,
        exclude_page: int | None = None,
        renderable_only: bool = False,
        card_vector: np.ndarray | None = None,
        local_only: bool = False,
        card_pool: int = 0,
        card_space: np.ndarray | None = None,
    ) -> list[SearchHit]:
        """Hybrid search; ``base`` is a set of ecosystems ({'sd1'}, {'sdxl'}) or None for any.
        ``card_vector`` (the request as the card encoder reads it, ``agent/cards.py``) adds the ``card`` signal: its
        cosine with each model's card vector, weighted by ``weights["card"]``; with ``card_pool`` the ``card_pool``
        models whose cards match best also follow the ``limit`` best hits (signal ``card_pool`` 1): the models that no
        creator's image shows reach the ranker through their cards alone. ``card_space`` (``card_vectors``) are the
        card vectors the encoder reads; the stock ones when not given.
        ``renderable_only`` leaves out what a call cannot use: models with no known weights, and checkpoints
        that cannot render alone (refiners, inpainting models); ``local_only`` keeps the models whose weights are
        on this machine (a local path, as ``registry scan`` records).

        ``exclude_page`` leaves one model page's sample images out of the kNN and creator votes (how
        training examples see the registry, like the benchmark's held-out pages)."""
        idx = self._load_index()
        w = {**self.WEIGHTS, **(weights or {})}
        allow = self.allow_nsfw if allow_nsfw is None else allow_nsfw
        sub = idx.subset(types, base, min_downloads, allow, renderable_only, local_only)
        if not len(sub.rows):
            return []
        score = w["prior"] * idx.prior.copy()
        signals: dict[str, np.ndarray] = {"prior": idx.prior}
        query = (query or "").strip()
        if query:
            signals["lexical"] = idx.column(self.lexical_scores(query))
            score += w["lexical"] * signals["lexical"]
            if (idx.vec is not None or idx.pvec is not None) and (w["semantic"] or w["prompts"]):
                qv = query_vector if query_vector is not None else self.embedder.encode_query(query)
                with one_blas_thread():
                    stock = card_space is None or card_space is idx.vec
                    for name, matrix, at, v in (
                        ("semantic", sub.vec, sub.rows, qv),
                        ("prompts", sub.pvec, sub.prows, qv),
                        ("card", sub.vec if stock else sub.gather(card_space), sub.rows, card_vector),
                    ):
                        if matrix is not None and v is not None:
                            sim = np.zeros(len(idx.ids), dtype=np.float32)
                            sim[at] = np.clip(matrix @ v, 0, 1)
                            signals[name] = sim
                            score += w.get(name, 0.0) * sim
            votes = {
                "knn": lambda: self.prompt_neighbours(query, k=50, exclude_page=exclude_page),
                "creators": lambda: self.creator_votes(query, exclude_page=exclude_page),
            }
            for name, vote in votes.items():
                if w[name]:
                    signals[name] = idx.column(vote())
                    score += w[name] * signals[name]
        top = idx.best(score, sub.mask, limit)
        by_card: set[int] = set()
        if card_pool > 0 and "card" in signals:
            by_pool = idx.best(signals["card"], sub.mask, card_pool)
            by_card = {int(i) for i in by_pool}
            taken = set(top.tolist())
            top = np.concatenate([top, np.asarray([i for i in by_pool if i not in taken], dtype=top.dtype)])
        infos = self.versions([int(idx.ids[i]) for i in top])
        return [
            SearchHit(
                version=infos[int(idx.ids[i])],
                score=float(score[i]),
                signals={
                    **{name: float(arr[i]) for name, arr in signals.items()},
                    **({"card_pool": 1.0} if int(i) in by_card else {}),
                },
            )
            for i in top
            if int(idx.ids[i]) in infos
        ]

    def card_vectors(self, encoder) -> np.ndarray | None:
        """The card vectors ``encoder``'s requests are compared with, one row per search-index row: the stock ones
        (``None`` without sentence vectors) for a request-only encoder; for a two-tower one the checkpoint cards as it
        reads them (``registry/card_space.py``; zeros where a row is no checkpoint), encoded once and cached beside
        the registry."""
        idx = self._load_index()
        if encoder.towers != "both":
            return idx.vec
        digest = encoder.digest()
        with self._lock:
            hit = self._card_spaces.get(digest)
        if hit is not None:
            return hit
        from diffagent.registry.card_space import load_or_build

        ids, vectors = load_or_build(self.engine, self.path, self.embedder, encoder)
        matrix = np.zeros((len(idx.ids), vectors.shape[1] if len(ids) else 0), dtype=np.float32)
        for vid, row in zip(ids.tolist(), vectors):
            i = idx.pos.get(int(vid))
            if i is not None:
                matrix[i] = row
        with self._lock:
            self._card_spaces[digest] = matrix
        return matrix

    @property
    def has_vectors(self) -> bool:
        """Model cards are embedded (semantic search, the card adapter) in the configured embedder's space."""
        return self._load_index().vec is not None

    def has_creator_prompts(self, version_id: int) -> bool:
        """Whether creators' sample prompts in this registry reach the version (its prompt-set vector exists)."""
        idx = self._load_index()
        return idx.flag(idx.has_pvec, version_id)

    def is_local(self, version_id: int) -> bool:
        """The version's weights are on this machine (a local path the registry records)."""
        idx = self._load_index()
        return idx.flag(idx.local, version_id)

    def is_renderable(self, version_id: int) -> bool:
        """The registry knows where this version's weights are, and (a checkpoint) it renders alone."""
        idx = self._load_index()
        return idx.flag(idx.renderable, version_id)

    def addons_by_trigger(self, types: tuple[str, ...] = ("embedding",)) -> dict[str, VersionInfo]:
        """Lower-cased trigger word / file stem -> add-on version (most downloaded wins); cached."""
        cache = self._addon_cache
        with self._lock:
            if types in cache:
                return cache[types]
        with self.engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT v.id, f.name FROM model_version v JOIN model m ON m.id = v.model_id"
                    " LEFT JOIN model_file f ON f.version_id = v.id"
                    " WHERE m.type IN :types ORDER BY m.downloads DESC, v.id"
                ).bindparams(bindparam("types", expanding=True)),
                {"types": list(types)},
            ).all()
        infos = self.versions(sorted({r[0] for r in rows}))
        out: dict[str, VersionInfo] = {}
        for vid, fname in rows:
            info = infos[vid]
            keys = [w.lower() for w in info.trained_words] + ([Path(fname).stem.lower()] if fname else [])
            for key in keys:
                out.setdefault(key, info)
        with self._lock:
            cache[types] = out
        return out

    def popular(self, *, types: list[str], base: set[str] | None = None, limit: int = 20) -> list[int]:
        """Most downloaded version ids (the popularity baseline)."""
        idx = self._load_index()
        mask = idx.mask(types, base, 0, self.allow_nsfw)
        order = np.argsort(-np.where(mask, idx.downloads, -1), kind="stable")[: min(limit, int(mask.sum()))]
        return [int(idx.ids[i]) for i in order]
