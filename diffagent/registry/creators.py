"""The checkpoints an add-on's creator works with.

A request that names a LoRA's or an embedding's trigger word is usually made with that add-on; the
images posted on its creator's model pages say which checkpoints go with it ("the author of this
LoRA renders with Anything V5"). Measured on the benchmark's val split (1,500 pairs, pages held out,
``Registry.search`` with every other signal as it is): at weight 0.5 this vote raises checkpoint top-1
from 0.237 to 0.241 and top-5 from 0.344 to 0.358 (at weight 1.0 top-1 falls to 0.230).

Counts are kept per (creator, page) so that a training example can leave its own page out, as the
benchmark's held-out pages are.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from sqlalchemy import Engine, bindparam, text

#: model types whose trigger words point at a creator (checkpoints are ranked by the search itself)
ADDON_TYPES = ("lora", "locon", "embedding", "hypernetwork")


@dataclass
class CreatorIndex:
    #: creator -> page (model id) -> checkpoint version id -> number of SFW images
    usage: dict[str, dict[int, dict[int, int]]]
    #: add-on version id -> its model's creator
    creator_of: dict[int, str]

    @classmethod
    def build(cls, engine: Engine) -> CreatorIndex:
        usage: dict[str, dict[int, dict[int, int]]] = defaultdict(lambda: defaultdict(dict))
        with engine.connect() as conn:
            for creator, page, version, n in conn.execute(
                text(
                    "SELECT pm.creator, s.page_model_id, s.version_id, count(*) FROM sample_image s"
                    " JOIN model pm ON pm.id = s.page_model_id"
                    " JOIN model_version cv ON cv.id = s.version_id JOIN model cm ON cm.id = cv.model_id"
                    " WHERE cm.type = 'checkpoint' AND NOT s.nsfw AND pm.creator IS NOT NULL"
                    " GROUP BY pm.creator, s.page_model_id, s.version_id"
                )
            ):
                usage[creator][page][version] = n
            creator_of = {
                v: c
                for v, c in conn.execute(
                    text(
                        "SELECT v.id, m.creator FROM model_version v JOIN model m ON m.id = v.model_id"
                        " WHERE m.creator IS NOT NULL AND m.type IN :types"
                    ).bindparams(bindparam("types", expanding=True)),
                    {"types": list(ADDON_TYPES)},
                )
            }
        return cls(usage={c: dict(p) for c, p in usage.items()}, creator_of=creator_of)

    def checkpoints(self, creator: str, exclude_page: int | None = None) -> dict[int, float]:
        """Share of the creator's images made with each checkpoint version (sums to 1, or empty)."""
        counts: dict[int, int] = {}
        for page, versions in self.usage.get(creator, {}).items():
            if page == exclude_page:
                continue
            for vid, n in versions.items():
                counts[vid] = counts.get(vid, 0) + n
        total = sum(counts.values())
        return {vid: n / total for vid, n in counts.items()} if total else {}

    def votes(self, matches: dict[int, float], exclude_page: int | None = None) -> dict[int, float]:
        """Checkpoint votes for add-ons matched in a request (``{addon version: match strength}``): each
        add-on spreads its strength over its creator's checkpoints; clipped to [0, 1]."""
        out: dict[int, float] = {}
        for addon, strength in matches.items():
            creator = self.creator_of.get(addon)
            if creator is None:
                continue
            for vid, share in self.checkpoints(creator, exclude_page).items():
                out[vid] = out.get(vid, 0.0) + strength * share
        return {vid: min(1.0, s) for vid, s in out.items()}
