"""A checkpoint's kind from what its creators write: anime mixes that tag themselves "realistic".

Derived kinds (``kinds.py``) read a page's tags, name and description, and 2.5D anime mixes often tag themselves
photorealistic (OrangeChillMix, Everlasting, Anyfetus: "photo" by their tags), so a plain request for a photo of
a car could go to one of them. The prompts creators wrote with a checkpoint say what it is used for: the
registry's ``prompts`` vector of a checkpoint (the mean embedding of up to 8 of its creators' SFW prompts,
``index.py``) lies nearer the prompts of anime models or nearer those of photo models.

``refine_checkpoint_kinds`` relabels a checkpoint derived "photo" as ``anime`` when its creators agree on three
counts: its prompt vector lies nearer the centroid of anime checkpoints' prompt vectors than that of photo
checkpoints' (the anchors: every checkpoint whose derived first kind is anime or photo, thousands of pages in the
Civitai dump, labelled from their own text); at least half of its prompts use anime words or booru tags ("anime",
"1girl", "solo", ...); and fewer than a third name a photo look ("photo", "realistic", "dslr", ...). The words
matter: the Asian portrait mixes (ChilloutMix, majicMIX) are photo models whose prompts are booru tags plus
"realistic, RAW photo", and the vectors alone moved 151 versions of the dump, ChilloutMix among them; with the
words 26 versions of 11 pages move (GhostMix, OrangeChillMix, Everlasting, Anyfetus, ...). A page is judged as a
whole, its versions pooled, as derived kinds are per page. It needs five SFW prompts, and it leaves a page alone
whose name says photo (a name is the creator's own word for what the model does: "majicMIX realistic"). The
changed rows get origin ``prompts``; curated labels and every other derived kind stay as they are.
Deterministic: anchors and decisions are computed from the derived labels (``derive``), never from an earlier
refinement, so re-running it changes nothing.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from types import SimpleNamespace

import numpy as np
from sqlalchemy import Connection, text

from diffagent.registry.kinds import _CK_NAME, _words, derive

#: fewest anchors per side for a centroid to mean anything; below it nothing is relabelled
MIN_ANCHORS = 20
#: fewest SFW creators' prompts of a checkpoint to judge it by them
MIN_PROMPTS = 5
ORIGIN = "prompts"
#: words of creators' prompts that mark an anime look, and a photo look
_ANIME_WORDS = re.compile(r"\b(anime|manga|1girl|1boy|2girls|solo|looking at viewer|chibi|2d|cel shading)\b")
_PHOTO_WORDS = re.compile(
    r"\b(photo|photos|photograph|photography|raw photo|realistic|photorealistic|photorealism|realism|"
    r"hyperrealistic|dslr|film grain|analog|skin pores|35mm|bokeh|canon|nikon|sony|fujifilm)\b"
)


def _word_counts(conn: Connection) -> dict[int, list[int]]:
    """Per checkpoint version: its SFW prompts, those with anime words, those with photo words."""
    counts: dict[int, list[int]] = defaultdict(lambda: [0, 0, 0])
    for vid, prompt in conn.execute(
        text("SELECT version_id, prompt FROM sample_image WHERE version_id IS NOT NULL AND NOT nsfw")
    ):
        low = prompt.lower()
        c = counts[vid]
        c[0] += 1
        c[1] += bool(_ANIME_WORDS.search(low))
        c[2] += bool(_PHOTO_WORDS.search(low))
    return counts


def _name_says_photo(model_name: str) -> bool:
    return any(_CK_NAME.get(w) == "photo" for w in _words(model_name))


def refine_checkpoint_kinds(conn: Connection) -> int:
    """Relabel derived-photo checkpoints whose creators' prompts read as anime (see the module docstring); returns
    how many checkpoint versions are labelled ``anime`` by their prompts now. A page is judged as a whole (its
    versions' prompt vectors averaged, their prompts counted together), as its derived kinds are: a version with
    few images of its own takes its page's verdict."""
    rows = conn.execute(
        text(
            "SELECT v.id AS id, v.model_id AS model_id, m.name AS model_name, v.name AS name, m.tags AS tags,"
            " v.trained_words AS words, m.description AS description, k.origin AS origin, x.data AS data,"
            " x.model AS vector_model"
            " FROM model_version v JOIN model m ON m.id = v.model_id"
            " JOIN model_kind k ON k.version_id = v.id"
            " LEFT JOIN vector x ON x.owner_id = v.id AND x.kind = 'prompts'"
            " WHERE m.type = 'checkpoint' AND k.origin IN ('derived', :origin) ORDER BY v.id"
        ),
        {"origin": ORIGIN},
    ).all()
    derived = {
        r.id: derive(
            "checkpoint", r.model_name, r.name, json.loads(r.tags), json.loads(r.words), r.description or ""
        ).kinds
        for r in rows
    }
    # vectors of one embedder only (a registry re-embedded in part with another model holds two spaces): the most
    # common one, as search reads the configured one
    models = [r.vector_model for r in rows if r.data is not None]
    space = max(set(models), key=models.count) if models else None
    rows = [SimpleNamespace(**{**r._mapping, "data": r.data if r.vector_model == space else None}) for r in rows]
    pages: dict[int, list] = defaultdict(list)
    for r in rows:
        pages[r.model_id].append(r)
    page_ids = [m for m, rs in pages.items() if any(r.data is not None for r in rs)]
    # a page whose prompt vectors are gone keeps no refined label
    stale = [
        {"id": r.id, "kinds": json.dumps(list(derived[r.id])), "origin": "derived"}
        for m, rs in pages.items()
        if all(x.data is None for x in rs)
        for r in rs
        if r.origin == ORIGIN
    ]
    if stale:
        conn.execute(text("UPDATE model_kind SET kinds = :kinds, origin = :origin WHERE version_id = :id"), stale)
    if not page_ids:
        return 0
    vectors = np.zeros((len(page_ids), len(next(r.data for r in rows if r.data is not None)) // 2), np.float32)
    first = []
    for i, m in enumerate(page_ids):
        v = sum(np.frombuffer(r.data, dtype=np.float16).astype(np.float32) for r in pages[m] if r.data is not None)
        vectors[i] = v / (np.linalg.norm(v) or 1.0)
        kinds = [derived[r.id][0] for r in pages[m] if derived[r.id]]
        first.append(max(set(kinds), key=kinds.count) if kinds else "")
    first = np.array(first, dtype=object)

    def centroid(kind: str) -> np.ndarray | None:
        members = vectors[first == kind]
        if len(members) < MIN_ANCHORS:
            return None
        c = members.mean(0)
        return c / (np.linalg.norm(c) or 1.0)

    anime, photo = centroid("anime"), centroid("photo")
    counts = _word_counts(conn) if anime is not None and photo is not None else {}
    updates, refined = [], 0
    for m, v in zip(page_ids, vectors, strict=True):
        n, anime_words, photo_words = (sum(counts.get(r.id, (0, 0, 0))[j] for r in pages[m]) for j in range(3))
        anime_page = (
            anime is not None
            and n >= MIN_PROMPTS
            and anime_words >= 0.5 * n
            and photo_words < n / 3
            and not _name_says_photo(pages[m][0].model_name)
            and float(v @ anime) > float(v @ photo)
        )
        for r in pages[m]:
            relabel = anime_page and derived[r.id][:1] == ("photo",)
            new_kinds, origin = (("anime",), ORIGIN) if relabel else (derived[r.id], "derived")
            refined += relabel
            if origin != r.origin or relabel:
                updates.append({"id": r.id, "kinds": json.dumps(list(new_kinds)), "origin": origin})
    if updates:
        conn.execute(text("UPDATE model_kind SET kinds = :kinds, origin = :origin WHERE version_id = :id"), updates)
    return refined
