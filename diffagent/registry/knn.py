""" "Models whose users wrote prompts like this one": TF-IDF nearest neighbours over the creators'
sample prompts, each neighbour voting (by cosine similarity) for the checkpoint it was made with.

Word uni- and bigrams with sublinear TF: creators' prompts are tag lists, and which tags co-occur
("1girl, solo" vs "rpg, dungeon") says more than single words. The fitted index is cached beside the
database (``<db>.knn.npz``, written atomically) and keyed by the sample-image table's content, so it is
rebuilt only after an import changes the prompts. The cache is plain arrays (``.npz``), never a pickle.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sqlalchemy import Engine, text

from diffagent.atomic import write_atomic

FORMAT = 5  # 5: LoRAs named by Civitai download stems resolve too (stats.lora_name_index)
VECTORIZER_ARGS = {
    "sublinear_tf": True,
    "stop_words": "english",
    "ngram_range": (1, 2),
    "max_features": 200_000,
    "dtype": np.float32,
}


@dataclass
class PromptIndex:
    key: str
    vectorizer: object  # sklearn TfidfVectorizer; None in an empty index
    matrix: object  # scipy.sparse CSR (n_prompts x n_features), rows L2-normalized
    labels: np.ndarray  # checkpoint version id per row
    lora_ptr: np.ndarray  # row i used LoRA versions lora_ids[lora_ptr[i]:lora_ptr[i+1]]
    lora_ids: np.ndarray
    pages: np.ndarray  # the model page each row's image was posted on
    _last: tuple | None = field(default=None, repr=False, compare=False)
    _by_term: object = field(default=None, repr=False, compare=False)

    def neighbours(self, query: str, k: int = 20, exclude_page: int | None = None) -> list[tuple[int, float]]:
        """(row, cosine) of the ``k`` nearest prompts with a positive similarity; ``exclude_page`` drops
        the images of one model page (training examples see the registry as a held-out page would)."""
        if self.matrix.shape[0] == 0 or not query.strip():
            return []
        sims = self._similarities(query, exclude_page)
        k = min(k, len(sims))
        top = np.argpartition(-sims, k - 1)[:k]
        return [(int(i), float(sims[i])) for i in top if sims[i] > 0]

    def _similarities(self, query: str, exclude_page: int | None) -> np.ndarray:
        """Cosine similarity of ``query`` to every prompt. The last query's result is kept: one request
        asks for checkpoint votes and then LoRA votes (a sparse product over every prompt, each time)."""
        last = self._last
        if last is not None and last[0] == (query, exclude_page):
            return last[1]
        q = self.vectorizer.transform([query])
        if self._by_term is None:  # column-major copy: a query touches only its own terms' columns
            self._by_term = self.matrix.tocsc()
        sims = np.zeros(self.matrix.shape[0], dtype=np.float32)
        if q.nnz:
            sims = np.asarray(self._by_term[:, q.indices] @ q.data, dtype=np.float32).ravel()
        if exclude_page is not None:
            sims[self.pages == exclude_page] = 0.0
        self._last = ((query, exclude_page), sims)  # one assignment: safe to share between threads
        return sims

    def votes(self, query: str, k: int = 20, exclude_page: int | None = None) -> dict[int, float]:
        """Similarity-weighted checkpoint votes of the ``k`` nearest prompts, scaled to [0, 1]."""
        out: dict[int, float] = {}
        for i, sim in self.neighbours(query, k, exclude_page):
            vid = int(self.labels[i])
            out[vid] = out.get(vid, 0.0) + sim
        best = max(out.values(), default=0.0)
        return {v: s / best for v, s in out.items()} if best else {}

    def document_share(self, word: str) -> float:
        """The share of creators' prompts that contain ``word`` (one lower-case word), read back from the fitted
        IDF (smooth: idf = ln((1 + n) / (1 + df)) + 1). A word the index did not keep (in fewer than
        ``min_df`` prompts, or a stop word) or an empty index gives 0."""
        n = self.matrix.shape[0]
        i = self.vectorizer.vocabulary_.get(word) if self.vectorizer is not None else None
        if not n or i is None:
            return 0.0
        return max((1 + n) / math.exp(float(self.vectorizer.idf_[i]) - 1.0) - 1.0, 0.0) / n

    def lora_votes(self, query: str, k: int = 20, exclude_page: int | None = None) -> dict[int, float]:
        """LoRA versions the nearest prompts used: similarity mass of the neighbours using each, as a
        fraction of all neighbours' mass (so 0.5 = half of the similar images used it)."""
        nb = self.neighbours(query, k, exclude_page)
        total = sum(s for _, s in nb)
        out: dict[int, float] = {}
        for i, sim in nb:
            for lid in self.lora_ids[self.lora_ptr[i] : self.lora_ptr[i + 1]]:
                out[int(lid)] = out.get(int(lid), 0.0) + sim
        return {v: s / total for v, s in out.items()} if total else {}


def _content_key(engine: Engine) -> str:
    with engine.connect() as conn:
        n, max_id, resolved = conn.execute(
            text(
                "SELECT count(*), coalesce(max(id), 0), coalesce(sum(version_id), 0) FROM sample_image"
                " WHERE version_id IS NOT NULL AND NOT nsfw"
            )
        ).one()
    return f"v{FORMAT}:{n}:{max_id}:{resolved}"


def _save(index: PromptIndex, path: Path) -> None:
    terms = sorted(index.vectorizer.vocabulary_, key=index.vectorizer.vocabulary_.get)
    m = index.matrix
    write_atomic(
        path,
        lambda tmp: np.savez(
            tmp,
            key=np.array(index.key),
            terms=np.array(json.dumps(terms)),
            idf=index.vectorizer.idf_,
            data=m.data,
            indices=m.indices,
            indptr=m.indptr,
            shape=np.array(m.shape),
            labels=index.labels,
            lora_ptr=index.lora_ptr,
            lora_ids=index.lora_ids,
            pages=index.pages,
        ),
    )


def _load(path: Path, key: str) -> PromptIndex | None:
    from scipy.sparse import csr_matrix
    from sklearn.feature_extraction.text import TfidfVectorizer

    with np.load(path, allow_pickle=False) as z:
        if str(z["key"]) != key:
            return None
        terms = json.loads(str(z["terms"]))
        vectorizer = TfidfVectorizer(vocabulary={t: i for i, t in enumerate(terms)}, **VECTORIZER_ARGS)
        vectorizer.idf_ = z["idf"]
        matrix = csr_matrix((z["data"], z["indices"], z["indptr"]), shape=tuple(z["shape"]))
        return PromptIndex(
            key=key,
            vectorizer=vectorizer,
            matrix=matrix,
            labels=z["labels"],
            lora_ptr=z["lora_ptr"],
            lora_ids=z["lora_ids"],
            pages=z["pages"],
        )


def load_or_build(engine: Engine, location) -> PromptIndex:
    from diffagent.registry import sidecar
    from diffagent.registry.location import cache_base

    key = _content_key(engine)
    return sidecar.load_or_build(
        Path(f"{cache_base(location)}.knn.npz"),
        key,
        load=_load,
        build=lambda: build(engine, key),
        save=_save,
        worth_saving=lambda index: bool(index.matrix.shape[0]),
        what="prompt index",
    )


def _empty(key: str) -> PromptIndex:
    """An index that matches nothing (``neighbours`` never consults its vectorizer)."""
    from scipy.sparse import csr_matrix

    none = np.zeros(0, dtype=np.int64)
    return PromptIndex(
        key=key,
        vectorizer=None,
        matrix=csr_matrix((0, 0), dtype=np.float32),
        labels=none,
        lora_ptr=np.zeros(1, dtype=np.int64),
        lora_ids=none,
        pages=none,
    )


def build(engine: Engine, key: str) -> PromptIndex:
    from diffagent.registry.stats import lora_name_index, loras_used

    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT prompt, version_id, resources, page_model_id FROM sample_image"
                " WHERE version_id IS NOT NULL AND NOT nsfw AND length(prompt) > 0 ORDER BY id"
            )
        ).all()
        by_stem = lora_name_index(conn)
    if not rows:  # e.g. the default registry: no sample images, and no 0.6 s scikit-learn import
        return _empty(key)
    from sklearn.feature_extraction.text import TfidfVectorizer

    ptr, ids = [0], []
    for r in rows:
        ids += sorted(loras_used(r[2], by_stem))
        ptr.append(len(ids))
    vectorizer = TfidfVectorizer(min_df=2 if len(rows) > 1000 else 1, **VECTORIZER_ARGS)
    try:
        matrix = vectorizer.fit_transform([r[0] for r in rows]).tocsr()
    except ValueError:  # only stop words: an index that matches nothing
        return _empty(key)
    return PromptIndex(
        key=key,
        vectorizer=vectorizer,
        matrix=matrix,
        labels=np.array([r[1] for r in rows], dtype=np.int64),
        lora_ptr=np.array(ptr, dtype=np.int64),
        lora_ids=np.array(ids, dtype=np.int64),
        pages=np.array([r[3] for r in rows], dtype=np.int64),
    )
