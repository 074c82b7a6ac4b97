"""The add-on creators' checkpoint vote, and leaving one model page out of the registry's votes."""

from __future__ import annotations

import re

import pytest
from civitai_fixtures import items, write_jsonl
from hypothesis import given
from hypothesis import strategies as st

from diffagent.registry.creators import CreatorIndex
from diffagent.registry.importer import import_path
from diffagent.registry.store import Registry, contains_words


def test_votes_spread_each_addon_over_its_creators_checkpoints():
    index = CreatorIndex(
        usage={"ann": {10: {1: 3, 2: 1}}, "bob": {20: {2: 2}, 21: {3: 2}}},
        creator_of={100: "ann", 200: "bob", 300: "nobody"},
    )
    assert index.checkpoints("ann") == {1: 0.75, 2: 0.25}
    assert index.votes({100: 1.0}) == {1: 0.75, 2: 0.25}
    assert index.votes({200: 0.8}) == pytest.approx({2: 0.4, 3: 0.4})
    assert index.votes({100: 1.0, 200: 1.0}) == pytest.approx({1: 0.75, 2: 0.75, 3: 0.5})
    assert index.votes({300: 1.0}) == {} and index.votes({999: 1.0}) == {}  # no images / unknown add-on
    assert index.votes({200: 1.0}, exclude_page=21) == {2: 1.0}  # a held-out page no longer votes
    assert index.votes({100: 1.0, 200: 1.0, 201: 1.0}) == pytest.approx({1: 0.75, 2: 0.75, 3: 0.5})


@pytest.fixture(scope="module")
def creators_registry(tmp_path_factory, embedder, new_registry) -> Registry:
    """The tiny registry with the watercolor LoRA by the Aquarelle creator, everything else by others."""
    rows = items()
    for row in rows:
        row["creator"] = {"username": "aqua" if row["id"] in (103, 202) else f"user{row['id']}"}
    d = tmp_path_factory.mktemp("creators")
    db = new_registry("creators")
    import_path(write_jsonl(d / "items.jsonl", rows), db, embedder=None)
    reg = Registry.open(db, embedder=embedder)
    yield reg
    reg.close()


def test_a_trigger_word_votes_for_the_checkpoints_its_creator_uses(creators_registry):
    votes = creators_registry.creator_votes("a cat, wtrclr")  # the Watercolor Style LoRA's trigger
    strength = creators_registry.trigger_matches("a cat, wtrclr")[2002]
    # Aquarelle made every image on its creator's pages, so it gets the trigger match's whole strength
    assert votes == {1003: pytest.approx(strength)} and 0.5 < strength <= 1.0
    assert creators_registry.creator_votes("a cat") == {}
    assert creators_registry.creator_votes("a cat, wtrclr", exclude_page=103) == {}


def test_search_uses_the_creator_vote_and_can_leave_a_page_out(creators_registry):
    query = "a cat on a sofa, wtrclr"
    hits = creators_registry.search(query, types=["checkpoint"], limit=5)
    assert hits[0].version.id == 1003 and hits[0].signals["creators"] > 0.5
    off = creators_registry.search(query, types=["checkpoint"], limit=5, weights={"creators": 0.0})
    assert "creators" not in off[0].signals
    held = creators_registry.search(query, types=["checkpoint"], limit=5, exclude_page=103)
    assert all(h.signals["creators"] == 0.0 for h in held)


def test_excluding_a_page_drops_its_images_from_the_prompt_votes(tiny_registry):
    fox = "watercolor painting of a fox in a misty forest, paper texture"
    assert 1003 in tiny_registry.prompt_neighbours(fox)  # Aquarelle's own sample images vote for it...
    assert 1003 not in tiny_registry.prompt_neighbours(fox, exclude_page=103)  # ...all on its own page
    assert 1003 in tiny_registry.prompt_neighbours(fox, exclude_page=101)
    photo = "portrait photo of an old fisherman, 85mm, film grain"
    assert 2001 in tiny_registry.lora_neighbours(photo)  # the fisherman image used the film grain LoRA
    assert 2001 not in tiny_registry.lora_neighbours(photo, exclude_page=101)


@given(text=st.text(alphabet="ab _,-é1", max_size=12), phrase=st.text(alphabet="ab _-é1", min_size=1, max_size=4))
def test_contains_words_matches_the_word_boundary_regex(text, phrase):
    expected = re.search(r"(?<![\w])" + re.escape(phrase) + r"(?![\w])", text) is not None
    assert contains_words(text, phrase) == expected


def test_vectors_of_another_embedder_are_not_mixed_into_semantic_search(tiny_registry_path, embedder, caplog):
    class Renamed:
        """The same encoder under another model name: the registry's vectors are not its vectors."""

        name = "some-other-model"

        def __getattr__(self, attr):
            return getattr(embedder, attr)

    reg = Registry.open(tiny_registry_path, embedder=Renamed())
    with caplog.at_level("WARNING"):
        hits = reg.search("watercolor painting of a fox", types=["checkpoint"], limit=3)
    assert "not of the configured embedder some-other-model" in caplog.text and "Re-import" in caplog.text
    assert hits and "semantic" not in hits[0].signals and "lexical" in hits[0].signals
    reg.close()
