"""The registry's in-memory search columns: one row per model version, loaded once per ``Registry``.

``Registry.search`` (``store.py``) fuses its signals over these rows: filters (type, ecosystem, NSFW, downloads,
renderable, local) as boolean masks, the popularity prior, and the sentence-vector matrices (model cards, and the
mean of creators' sampled prompts per checkpoint). Everything here is numpy over what one SQL read returned.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

import numpy as np
from sqlalchemy import Connection, text

from diffagent.families import FLOW, FLOW_REFERENCES, ecosystem_of
from diffagent.registry.embeddings import Embedder
from diffagent.registry.kinds import NOT_STANDALONE
from diffagent.registry.scan import WEIGHT_SUFFIXES

log = logging.getLogger(__name__)
#: files that hold one model (GGUF: quantized FLUX.1 transformers); a local path ending otherwise is a folder
_SINGLE_FILES = (*WEIGHT_SUFFIXES, ".gguf")


def _is_folder(r) -> bool:
    """The version's weights are a diffusers folder: a Hugging Face repo without a file, or a local folder."""
    local_folder = bool(r.local_path) and not r.local_path.lower().endswith(_SINGLE_FILES)
    return bool(r.hf_repo and not r.hf_file) or local_folder


def _renders(r, references: frozenset[str] = frozenset()) -> bool:
    """Selection may offer this version: its weights are known, it renders alone (no refiner or inpainting model),
    and a FLUX.1 / SD 3 checkpoint is a diffusers folder, or a ``.safetensors`` transformer file of a family in
    ``references``, the families whose every reference folder the registry holds (which one a file needs is read from
    its tensors when it renders, so all must be there). GGUF transformers do not load. LoRAs are single files in every
    family."""
    if not r.has_weights or set(json.loads(r.kinds or "[]")) & NOT_STANDALONE:
        return False
    eco = ecosystem_of(r.family)
    if r.type == "checkpoint" and eco in FLOW:
        if _is_folder(r):
            return True
        name = r.local_path or r.hf_file or r.file_name or ""
        return eco in references and name.lower().endswith(".safetensors")
    return True


def _flow_references_held(rows) -> frozenset[str]:
    """The flow families (``flux``, ``sd3``) whose every reference model (``FLOW_REFERENCES``) is a folder here."""
    folders = {
        r.slug
        for r in rows
        if r.type == "checkpoint" and ecosystem_of(r.family) in FLOW and r.has_weights and _is_folder(r)
    }
    return frozenset(eco for eco, refs in FLOW_REFERENCES.items() if set(refs.values()) <= folders)


_ROWS_SQL = (
    "SELECT v.id AS id, m.type AS type, v.family AS family, m.nsfw AS nsfw, v.downloads AS downloads,"
    " m.downloads AS model_downloads, k.kinds AS kinds,"
    " (v.hf_repo IS NOT NULL OR v.download_url IS NOT NULL OR v.local_path IS NOT NULL OR EXISTS"
    "  (SELECT 1 FROM model_file f WHERE f.version_id = v.id AND f.download_url IS NOT NULL))"
    " AS has_weights, v.local_path IS NOT NULL AS local, v.local_path AS local_path, v.hf_repo AS hf_repo,"
    " v.hf_file AS hf_file, m.slug AS slug,"
    " (SELECT f.name FROM model_file f WHERE f.version_id = v.id AND f.kind IN ('Model', 'Pruned Model')"
    "  ORDER BY f.id LIMIT 1) AS file_name"
    " FROM model_version v JOIN model m ON m.id = v.model_id"
    " LEFT JOIN model_kind k ON k.version_id = v.id"
    " WHERE m.type IN ('checkpoint','lora','locon','embedding','vae') ORDER BY v.id"
)


@dataclass(frozen=True)
class Subset:
    """The rows one filter allows: its mask, their row numbers and card vectors, and the allowed rows with prompt
    vectors and those (a search multiplies only the rows it may return: a sixth of the matrix for checkpoints)."""

    mask: np.ndarray
    rows: np.ndarray
    vec: np.ndarray | None
    prows: np.ndarray
    pvec: np.ndarray | None
    #: other matrices' rows of this filter (``gather``), keyed by the matrix's identity
    gathered: dict = field(default_factory=dict)

    def gather(self, matrix: np.ndarray) -> np.ndarray:
        """``matrix[rows]``, contiguous, computed once per matrix (a two-tower encoder's card vectors)."""
        key = id(matrix)
        hit = self.gathered.get(key)
        if hit is None or hit[0] is not matrix:
            hit = (matrix, np.ascontiguousarray(matrix[self.rows]))
            self.gathered[key] = hit  # one assignment: safe to share between threads
        return hit[1]


@dataclass
class SearchIndex:
    """Columns for filtering and ranking, and the vector matrices."""

    ids: np.ndarray  # version ids, int64
    types: np.ndarray  # object array of type names
    eco: np.ndarray  # object array of ecosystems
    nsfw: np.ndarray  # bool
    downloads: np.ndarray  # int64
    prior: np.ndarray  # float32 in [0, 1]
    vec: np.ndarray | None  # (n, d) float32 model-text vectors, zero rows where missing
    pvec: np.ndarray | None  # (n, d) float32 prompt-centroid vectors
    has_pvec: np.ndarray  # bool
    #: can be selected: the registry knows where its weights are (a file, a Hugging Face file or diffusers
    #: folder, a download URL) and it renders alone (not a refiner or an inpainting model)
    renderable: np.ndarray  # bool
    local: np.ndarray  # bool: weights on this machine (a local path)
    pos: dict[int, int]
    #: filter key -> ``Subset``: searches repeat a few filters
    subsets: dict = field(default_factory=dict)

    @classmethod
    def load(cls, conn: Connection, embedder: Embedder, where: str = "") -> SearchIndex:
        """Read the columns and the vectors of ``embedder``'s space (vectors of another model are skipped with a
        warning: their rows would rank noise); ``where`` names the database in that warning."""
        rows = conn.execute(text(_ROWS_SQL)).all()
        references = _flow_references_held(rows)
        ids = np.array([r.id for r in rows], dtype=np.int64)
        pos = {int(v): i for i, v in enumerate(ids)}
        downloads = np.array([max(r.downloads or 0, 0) for r in rows], dtype=np.int64)
        model_dl = np.array([max(r.model_downloads or 0, 0) for r in rows], dtype=np.int64)
        pop = np.log1p(np.maximum(downloads, model_dl // 4).astype(np.float64))
        prior = (pop / pop.max()).astype(np.float32) if len(pop) and pop.max() > 0 else np.zeros(len(ids), np.float32)
        vec = pvec = None
        has_p = np.zeros(len(ids), dtype=bool)
        mine = embedder.name
        others = conn.execute(text("SELECT DISTINCT model FROM vector WHERE model != :m"), {"m": mine}).scalars().all()
        if others:
            embedder.check()  # a misconfigured embedder is an error, not a silent fallback
            log.warning(
                "%s holds sentence vectors of %s, not of the configured embedder %s; semantic "
                "search uses only %s vectors. Re-import to embed with %s, or set "
                "DIFFAGENT_EMBEDDER to the model the registry was built with",
                where,
                ", ".join(others),
                mine,
                mine,
                mine,
            )
        for r in conn.execute(text("SELECT kind, owner_id, dim, data FROM vector WHERE model = :m"), {"m": mine}):
            i = pos.get(r.owner_id)
            if i is None:
                continue
            target = vec if r.kind == "version" else pvec
            if target is None:
                target = np.zeros((len(ids), r.dim), dtype=np.float32)
                if r.kind == "version":
                    vec = target
                else:
                    pvec = target
            target[i] = np.frombuffer(r.data, dtype=np.float16)
            if r.kind == "prompts":
                has_p[i] = True
        return cls(
            ids=ids,
            types=np.array([r.type for r in rows], dtype=object),
            eco=np.array([ecosystem_of(r.family) for r in rows], dtype=object),
            nsfw=np.array([bool(r.nsfw) for r in rows]),
            downloads=np.maximum(downloads, model_dl),
            prior=prior,
            vec=vec,
            pvec=pvec,
            has_pvec=has_p,
            pos=pos,
            local=np.array([bool(r.local) for r in rows], dtype=bool),
            renderable=np.array([_renders(r, references) for r in rows], dtype=bool),
        )

    def mask(self, types, base, min_downloads, allow_nsfw) -> np.ndarray:
        mask = np.ones(len(self.ids), dtype=bool)
        if types:
            wanted = {t.lower() for t in types}
            if "lora" in wanted:
                wanted.add("locon")
            mask &= np.isin(self.types, list(wanted))
        if base:
            mask &= np.isin(self.eco, list(base))
        if not allow_nsfw:
            mask &= ~self.nsfw
        if min_downloads:
            mask &= self.downloads >= min_downloads
        return mask

    def subset(self, types, base, min_downloads, allow_nsfw, renderable_only=False, local_only=False) -> Subset:
        """The filter's rows (``Subset``), cached per filter."""
        key = (
            tuple(sorted(types or ())),
            tuple(sorted(base or ())),
            int(min_downloads or 0),
            bool(allow_nsfw),
            bool(renderable_only),
            bool(local_only),
        )
        hit = self.subsets.get(key)
        if hit is None:
            mask = self.mask(types, base, min_downloads, allow_nsfw)
            if renderable_only:
                mask &= self.renderable
            if local_only:
                mask &= self.local
            rows = np.flatnonzero(mask)
            prows = rows[self.has_pvec[rows]]  # prompt vectors exist for checkpoints with creators' images only
            hit = Subset(
                mask=mask,
                rows=rows,
                vec=None if self.vec is None else np.ascontiguousarray(self.vec[rows]),
                prows=prows,
                pvec=None if self.pvec is None else np.ascontiguousarray(self.pvec[prows]),
            )
            if len(self.subsets) >= 32:
                self.subsets.clear()
            self.subsets[key] = hit  # one assignment: safe to share between threads
        return hit

    def column(self, values: dict[int, float]) -> np.ndarray:
        """A float32 column holding ``values`` (version id -> value) at their rows, 0 elsewhere."""
        out = np.zeros(len(self.ids), dtype=np.float32)
        for vid, v in values.items():
            i = self.pos.get(vid)
            if i is not None:
                out[i] = v
        return out

    def flag(self, column: np.ndarray, version_id: int) -> bool:
        """One row's value of a boolean column (``has_pvec``, ``local``, ``renderable``); False for an unknown id."""
        i = self.pos.get(int(version_id))
        return i is not None and bool(column[i])

    @staticmethod
    def best(values: np.ndarray, mask: np.ndarray, k: int) -> np.ndarray:
        """Rows of the ``k`` highest ``values`` that ``mask`` allows, highest first (ties in row order)."""
        values = np.where(mask, values, -np.inf)
        k = min(k, int(mask.sum()))
        if k <= 0:
            return np.zeros(0, dtype=np.int64)
        rows = np.argpartition(-values, k - 1)[:k]
        return rows[np.argsort(-values[rows], kind="stable")]
