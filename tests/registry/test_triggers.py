"""Trigger words found verbatim in a request, by the phrase's first word."""

from __future__ import annotations

from diffagent.registry.triggers import MIN_SEEN, TriggerIndex, TriggerUse, _Entry, load_or_build_use


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
    idx = _index(
        (1, "lora", "masterpiece"), (2, "lora", "masterpiece"), (3, "lora", "masterpiece"), (4, "embedding", "zarch")
    )
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
        f"a picture, {phrase}", ADDON_TYPES
    )


def test_trigger_use_needs_enough_prompts():
    use = TriggerUse(key="k", seen={1: MIN_SEEN, 2: MIN_SEEN - 1, 3: 40}, used={1: 1, 3: 30})
    assert use.precision(1) == 1 / MIN_SEEN and use.precision(2) is None and use.precision(3) == 0.75
    assert use.precision(99) is None


def test_trigger_use_counts_creators_prompts_and_their_loras(tiny_registry, tmp_path):
    """In the tiny registry two sample prompts type the watercolor LoRA's trigger and neither image used it; the
    film-grain LoRA's trigger is typed once, by the image that used it."""
    reg = tiny_registry
    use = load_or_build_use(reg.engine, tmp_path / "r.db", reg._triggers())  # noqa: SLF001
    assert use.seen == {2001: 1, 2002: 2} and use.used == {2001: 1}
    assert use.precision(2001) is None and use.precision(2002) == 0.0  # once is too rarely to tell; twice is not
    assert (tmp_path / "r.db.triggers.json").is_file()
    again = load_or_build_use(reg.engine, tmp_path / "r.db", reg._triggers())  # noqa: SLF001
    assert again.seen == use.seen and again.used == use.used
    (tmp_path / "r.db.triggers.json").write_text("{not json")  # a damaged cache is rebuilt
    assert load_or_build_use(reg.engine, tmp_path / "r.db", reg._triggers()).seen == use.seen  # noqa: SLF001
