"""Which add-ons a request activates: their trigger words, found verbatim in the request.

Creators type an add-on's trigger words ("hatsune miku", "gaogenxie", "<lora:...>" stripped) to activate it. The
index keeps every add-on version's trigger phrases under the phrase's first word, so a request looks up only the
phrases that start with one of its own words and checks each verbatim (``query.contains_words``). It is built
once from the version table (about 0.2 s for the 2023-07 dump) and answers in well under a millisecond, where a
full-text query over the trigger column took about 15 ms at 18,000 models and grew with the registry.

A phrase that several add-ons list ("masterpiece", "1girl", "pastel colors") names none of them, so phrases
claimed by more than ``max_claims`` versions of the asked types are ignored.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from dataclasses import dataclass

from sqlalchemy import Connection, bindparam, text

from diffagent.registry.query import contains_words

_TOKEN = re.compile(r"\w+", re.UNICODE)


def phrase_key(phrase: str) -> str:
    """How a trigger phrase is compared: lower-cased, without surrounding spaces and commas."""
    return phrase.lower().strip(" ,")


@dataclass(frozen=True)
class _Entry:
    version_id: int
    type: str
    phrase: str  # phrase_key of the trigger word


class TriggerIndex:
    def __init__(self, entries: list[_Entry]):
        self._by_word: dict[str, list[_Entry]] = defaultdict(list)
        self._claims: dict[tuple[str, ...], dict[str, int]] = {}
        self._entries = entries
        for e in entries:
            first = _TOKEN.search(e.phrase)
            if first is not None:
                self._by_word[first.group(0)].append(e)

    @classmethod
    def build(cls, conn: Connection, types: tuple[str, ...]) -> TriggerIndex:
        rows = conn.execute(
            text(
                "SELECT v.id AS id, m.type AS type, v.trained_words AS words FROM model_version v"
                " JOIN model m ON m.id = v.model_id WHERE m.type IN :types AND v.trained_words != '[]'"
            ).bindparams(bindparam("types", expanding=True)),
            {"types": list(types)},
        )
        entries = []
        for r in rows:
            for phrase in {phrase_key(w) for w in json.loads(r.words) if len(w.strip()) >= 3}:
                if len(phrase) >= 3:
                    entries.append(_Entry(int(r.id), r.type, phrase))
        return cls(entries)

    def claims(self, types: tuple[str, ...]) -> dict[str, int]:
        """How many versions of ``types`` list each trigger phrase."""
        key = tuple(sorted(types))
        if key not in self._claims:
            counts: dict[str, int] = defaultdict(int)
            for e in self._entries:
                if e.type in types:
                    counts[e.phrase] += 1
            self._claims[key] = dict(counts)
        return self._claims[key]

    def matches(self, query: str, types: tuple[str, ...], max_claims: int = 2) -> dict[int, float]:
        """Add-on versions of ``types`` whose distinctive trigger phrases occur verbatim (as whole words) in
        ``query``, scored by the longest matched phrase: ``min(1, 0.5 + len / 40)``."""
        lowered = f" {query.lower()} "
        claims = self.claims(types)
        best: dict[int, int] = {}
        for word in set(_TOKEN.findall(lowered)):
            for e in self._by_word.get(word, ()):
                if (
                    e.type in types
                    and claims.get(e.phrase, 0) <= max_claims
                    and len(e.phrase) > best.get(e.version_id, 0)
                    and contains_words(lowered, e.phrase)
                ):
                    best[e.version_id] = len(e.phrase)
        return {vid: min(1.0, 0.5 + n / 40) for vid, n in best.items()}


#: a trigger phrase's use is judged only after creators typed it this often (val 1,000, 10 % rule: 5 -> 0.279 /
#: 0.328 LoRA precision / recall, 3 -> 0.280 / 0.328, 2 -> 0.293 / 0.328, 1 -> 0.299 / 0.315)
MIN_SEEN = 2
USE_FORMAT = 2  # 2: LoRAs named by Civitai download stems resolve too


@dataclass
class TriggerUse:
    """How often creators who typed an add-on's trigger words used the add-on: for each LoRA version, the
    registry's SFW sample prompts whose text matches its triggers (``seen``) and those of them whose image used it
    (``used``). "nerdy" or "hanfu" are typed far more often than the LoRAs that list them are used."""

    key: str
    seen: dict[int, int]
    used: dict[int, int]

    def precision(self, version_id: int) -> float | None:
        """used / seen, or None when creators typed its triggers fewer than ``MIN_SEEN`` times."""
        n = self.seen.get(version_id, 0)
        return self.used.get(version_id, 0) / n if n >= MIN_SEEN else None


def _use_key(conn: Connection) -> str:
    n, top = conn.execute(text("SELECT count(*), coalesce(max(id), 0) FROM sample_image")).one()
    nv, topv = conn.execute(text("SELECT count(*), coalesce(max(id), 0) FROM model_version")).one()
    return f"u{USE_FORMAT}:{n}:{top}:{nv}:{topv}:{MIN_SEEN}"


def build_use(conn: Connection, index: TriggerIndex, types: tuple[str, ...] = ("lora", "locon")) -> TriggerUse:
    from diffagent.prompttext import strip_resource_tags
    from diffagent.registry.stats import lora_name_index, loras_used

    key = _use_key(conn)
    by_stem = lora_name_index(conn)
    seen: dict[int, int] = defaultdict(int)
    used: dict[int, int] = defaultdict(int)
    for prompt, resources in conn.execute(
        text("SELECT prompt, resources FROM sample_image WHERE NOT nsfw AND length(prompt) > 0")
    ):
        matched = index.matches(strip_resource_tags(prompt), types)
        if not matched:
            continue
        mine = loras_used(resources, by_stem)
        for vid in matched:
            seen[vid] += 1
            used[vid] += vid in mine
    return TriggerUse(key=key, seen=dict(seen), used={k: v for k, v in used.items() if v})


def _load_use(path, key: str) -> TriggerUse | None:
    data = json.loads(path.read_text(encoding="utf-8"))
    if data.get("key") != key:
        return None
    return TriggerUse(
        key=key, seen={int(k): v for k, v in data["seen"].items()}, used={int(k): v for k, v in data["used"].items()}
    )


def _save_use(use: TriggerUse, path) -> None:
    from diffagent.atomic import write_atomic

    write_atomic(
        path,
        lambda tmp: tmp.write_text(json.dumps({"key": use.key, "seen": use.seen, "used": use.used}), encoding="utf-8"),
    )


def load_or_build_use(engine, location, index: TriggerIndex) -> TriggerUse:
    """``build_use``, cached beside the registry (``<db>.triggers.json``) by a key of its images and versions."""
    from pathlib import Path

    from diffagent.registry import sidecar
    from diffagent.registry.location import cache_base

    with engine.connect() as conn:
        key = _use_key(conn)
        return sidecar.load_or_build(
            Path(f"{cache_base(location)}.triggers.json"),
            key,
            load=_load_use,
            build=lambda: build_use(conn, index),
            save=_save_use,
            worth_saving=lambda use: bool(use.seen),
            what="trigger use",
        )
