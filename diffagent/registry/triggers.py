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
        self._claims: dict[tuple[str, tuple[str, ...]], dict[str, int]] = {}
        self._entries = entries
        for e in entries:
            first = _TOKEN.search(e.phrase)
            if first is not None:
                self._by_word[first.group(0)].append(e)

    @classmethod
    def build(cls, conn: Connection, types: tuple[str, ...]) -> TriggerIndex:
        rows = conn.execute(text(
            "SELECT v.id AS id, m.type AS type, v.trained_words AS words FROM model_version v"
            " JOIN model m ON m.id = v.model_id WHERE m.type IN :types AND v.trained_words != '[]'"
        ).bindparams(bindparam("types", expanding=True)), {"types": list(types)})
        entries = []
        for r in rows:
            for phrase in {phrase_key(w) for w in json.loads(r.words) if len(w.strip()) >= 3}:
                if len(phrase) >= 3:
                    entries.append(_Entry(int(r.id), r.type, phrase))
        return cls(entries)

    def claims(self, types: tuple[str, ...]) -> dict[str, int]:
        """How many versions of ``types`` list each trigger phrase."""
        key = ("claims", tuple(sorted(types)))
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
                if (e.type in types and claims.get(e.phrase, 0) <= max_claims
                        and len(e.phrase) > best.get(e.version_id, 0) and contains_words(lowered, e.phrase)):
                    best[e.version_id] = len(e.phrase)
        return {vid: min(1.0, 0.5 + n / 40) for vid, n in best.items()}
