"""Trigger words found verbatim in a request, by the phrase's first word."""

from __future__ import annotations

from diffagent.registry.triggers import TriggerIndex, _Entry


def _index(*entries) -> TriggerIndex:
    return TriggerIndex([_Entry(v, t, p) for v, t, p in entries])


def test_whole_words_only_and_longest_phrase_scores():
    idx = _index((1, "lora", "hatsune miku"), (1, "lora", "miku"), (2, "lora", "wtrclr"), (3, "lora", "cat"))
    got = idx.matches("Hatsune Miku's concert, wtrclr style", ("lora",))
    assert set(got) == {1, 2}
    assert got[1] == min(1.0, 0.5 + len("hatsune miku") / 40) and got[2] == 0.5 + 6 / 40
    assert idx.matches("a catapult", ("lora",)) == {}  # "cat" inside another word is no match
    assert idx.matches("(cat:1.2)", ("lora",)) == {3: 0.5 + 3 / 40}


def test_phrases_many_addons_claim_name_none_of_them():
    idx = _index((1, "lora", "masterpiece"), (2, "lora", "masterpiece"), (3, "lora", "masterpiece"),
                 (4, "embedding", "zarch"))
    assert idx.matches("masterpiece, a house", ("lora",)) == {}
    assert idx.matches("masterpiece, a house", ("lora",), max_claims=3).keys() == {1, 2, 3}
    assert idx.matches("zarch house", ("lora",)) == {}  # another type
    assert idx.matches("zarch house", ("lora", "embedding")).keys() == {4}


def test_built_from_the_registry(tiny_registry):
    from diffagent.registry.creators import ADDON_TYPES

    with tiny_registry.engine.connect() as conn:
        idx = TriggerIndex.build(conn, ADDON_TYPES)
    words = {e.phrase for e in idx._entries}  # noqa: SLF001
    assert words and all(len(w) >= 3 and w == w.lower().strip(" ,") for w in words)
    phrase = sorted(words)[0]
    assert idx.matches(f"a picture, {phrase}", ADDON_TYPES)
    assert tiny_registry.trigger_matches(f"a picture, {phrase}", types=ADDON_TYPES) == idx.matches(
        f"a picture, {phrase}", ADDON_TYPES)
