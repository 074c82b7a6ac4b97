"""Selection on the default registry fits natural requests: the right kind of checkpoint, a LoRA only when the
request asks for what it does, never a model that cannot render alone (docs/fit.md)."""

from __future__ import annotations

import pytest

from diffagent.agent.retrieve import Candidate, RetrievalWeights, lora_evidence
from diffagent.agent.selector import Selector
from diffagent.registry.store import Registry
from diffagent.settings import Settings
from diffagent.tools import SelectOptions


@pytest.fixture(scope="module")
def registry():
    reg = Registry.open(Settings().registry)
    yield reg
    reg.close()


@pytest.fixture(scope="module")
def retrieval(registry):
    return Selector(registry, Settings(selector="retrieval"))


def kinds(registry, call):
    return registry.versions([call.checkpoint.id])[call.checkpoint.id].kinds


def lora_slugs(registry, call):
    infos = registry.versions([lo.id for lo in call.loras])
    return [infos[lo.id].slug for lo in call.loras]


@pytest.mark.parametrize(
    "prompt",
    [
        "a man sitting alone on a park bench",
        "a photo of the food of china",
        "a sheep in a field",
        "a metal bench in a park",
        "A cheeseburger",
        "latte art of a swan in a cup",
    ],
)
def test_plain_requests_get_a_photo_or_general_model_and_no_lora(registry, retrieval, prompt):
    call = retrieval.select(prompt, SelectOptions(seed=0))
    assert set(kinds(registry, call)) & {"photo", "general"}, (prompt, call.checkpoint.name)
    assert call.loras == [], (prompt, [lo.name for lo in call.loras])
    assert "style cue" in call.rationale


@pytest.mark.parametrize(
    "prompt, kind",
    [
        ("an anime girl with silver hair under cherry blossoms", "anime"),
        ("a drawing of a stork playing a violin", "art"),
        ("cubism painting of a guitar", "art"),
    ],
)
def test_style_cues_pick_that_kind(registry, retrieval, prompt, kind):
    call = retrieval.select(prompt, SelectOptions(seed=0))
    good = {"anime": {"anime"}, "art": {"art", "general"}}[kind]
    assert set(kinds(registry, call)) & good, (prompt, call.checkpoint.name)


def test_a_named_style_brings_its_lora(registry, retrieval):
    call = retrieval.select("pixel art of a castle on a hill", SelectOptions(seed=0, base="sdxl"))
    assert any("pixel" in s for s in lora_slugs(registry, call))
    call = retrieval.select("a chinese ink wash painting of a tiger", SelectOptions(seed=0, base="sd15"))
    assert "moxin" in lora_slugs(registry, call)


def test_a_lora_asked_for_by_tag_is_kept(registry, retrieval):
    call = retrieval.select("a sheep in a field <lora:MoXinV1:0.6>", SelectOptions(seed=0, base="sd15"))
    assert "moxin" in lora_slugs(registry, call)


def test_the_refiner_is_never_selected(registry, retrieval):
    for prompt in ("sdxl refiner", "Stable Diffusion XL Refiner 1.0 refiner base model", "a photo of a park bench"):
        sel = retrieval.select_many(prompt, SelectOptions(seed=0, n_candidates=8, base="sdxl"))
        names = [c.checkpoint.name for c in sel.calls] + [a.checkpoint.name for a in sel.calls[0].alternatives]
        assert not any("Refiner" in n for n in names), names


def _lora(registry, slug):
    ids = registry.popular(types=["lora"], limit=1000)
    info = next(i for i in registry.versions(ids).values() if i.slug == slug)
    return info


@pytest.mark.parametrize(
    "request_, signals, why",
    [
        ("a sheep in a field", {}, None),
        ("a sheep made of wool", {}, None),  # "Wool" is not a LoRA of this registry: see the concept case below
        ("an ink wash painting of a crane", {}, "concept"),
        ("a crane, shuimobysim", {"trigger": 0.8}, "trigger"),
        ("a crane", {"knn": 0.7, "cooccurrence": 0.3}, "creators"),
        ("a crane", {"knn": 0.7, "cooccurrence": 0.0}, None),  # similar prompts alone, never with this checkpoint
    ],
)
def test_lora_evidence_decisions(registry, request_, signals, why):
    moxin = _lora(registry, "moxin")
    c = Candidate(moxin, 1.0, {"trigger": 0.0, "knn": 0.0, "cooccurrence": 0.0, **signals})
    assert lora_evidence(c, request_, RetrievalWeights()) == why


def test_an_everyday_trigger_word_is_no_evidence(registry):
    """Creators list words such as "green" or "couch" among trigger words; a request that says them does not ask
    for the LoRA."""
    moxin = _lora(registry, "moxin")
    generic = moxin.model_copy(
        update={"trained_words": ["green", "couch"], "concepts": ["ink wash"], "model_name": "MoXin"}
    )
    c = Candidate(generic, 1.0, {"trigger": 0.9, "knn": 0.0, "cooccurrence": 0.0})
    assert lora_evidence(c, "a green frog on a couch") is None
    named = generic.model_copy(update={"trained_words": ["gaogenxie"]})
    assert lora_evidence(Candidate(named, 1.0, {"trigger": 0.7}), "gaogenxie, a frog") == "trigger"
    # ...unless several add-ons claim it (the trigger signal is 0 then)
    assert lora_evidence(Candidate(named, 1.0, {"trigger": 0.0}), "gaogenxie, a frog") is None


def test_a_trigger_creators_type_without_the_lora_is_no_evidence(registry):
    """ "nerdy" is a distinctive word to the vocabulary check, but creators who typed it used the LoRA listing it in
    2 of 100 images: not evidence. Where their use is unknown (-1) or high, the trigger still counts."""
    named = _lora(registry, "moxin").model_copy(update={"trained_words": ["gaogenxie"], "concepts": []})
    ask = "gaogenxie, a frog"
    assert lora_evidence(Candidate(named, 1.0, {"trigger": 0.7, "trigger_use": 0.02}), ask) is None
    assert lora_evidence(Candidate(named, 1.0, {"trigger": 0.7, "trigger_use": 0.6}), ask) == "trigger"
    assert lora_evidence(Candidate(named, 1.0, {"trigger": 0.7, "trigger_use": -1.0}), ask) == "trigger"
    strict = RetrievalWeights(lora_trigger_use_min=0.7)
    assert lora_evidence(Candidate(named, 1.0, {"trigger": 0.7, "trigger_use": 0.6}), ask, strict) is None


def test_detail_and_speed_loras_are_not_added_on_a_guess(registry):
    detail = _lora(registry, "detail-tweaker-lora")
    c = Candidate(detail, 1.0, {"trigger": 0.0, "knn": 0.0, "cooccurrence": 0.0})
    assert lora_evidence(c, "a portrait of a knight") is None
    assert lora_evidence(c, "a portrait of a knight, more detail") == "concept"


@pytest.mark.llm
def test_the_llm_selector_fits_a_plain_request(registry, gemma):
    llm = Selector(registry, Settings(selector="llm"), backend=gemma)
    call = llm.select("a man sitting alone on a park bench", SelectOptions(seed=0))
    assert set(kinds(registry, call)) & {"photo", "general"} and call.loras == []


class _AddonRegistry:
    """What ``request_intent`` reads: trigger matches and the matched add-ons' trigger words."""

    def __init__(self, words):
        self.words = words

    def trigger_matches(self, request, types=()):
        return {1: 0.9} if any(w.lower() in request.lower() for w in self.words) else {}

    def versions(self, ids):
        from types import SimpleNamespace

        return {1: SimpleNamespace(trained_words=self.words)}


@pytest.mark.parametrize(
    "words, request_, natural",
    [
        (["GasLampFantasyAI"], "GasLampFantasyAI castle", False),  # a coined trigger: the add-on's look is asked for
        (["sp4c3sh1p"], "skull shape sp4c3sh1p spaceship", False),
        (["skateboard"], "a skateboard in a park", True),  # an everyday word some add-on lists
        (["GasLampFantasyAI"], "a photo of a castle, GasLampFantasyAI", True),  # its own cue decides
    ],
)
def test_a_request_naming_an_addon_defers_to_its_creators(words, request_, natural):
    from diffagent.agent.retrieve import request_intent

    assert request_intent(_AddonRegistry(words), request_).natural is natural


def test_lora_tags_are_bounded_deduplicated_and_checked(registry, retrieval):
    from diffagent.errors import UserInputError

    call = retrieval.select("a crane " + "<lora:MoXinV1:0.6> " * 21, SelectOptions(seed=0, base="sd15", max_loras=0))
    assert lora_slugs(registry, call) == ["moxin"]  # 21 copies of one tag: one LoRA, not 21 stacked
    with pytest.raises(UserInputError, match="between -4 and 4"):
        retrieval.select("a cat <lora:MoXinV1:99>", SelectOptions(seed=0))


def test_a_call_carries_a_bounded_set_of_loras(registry, retrieval):
    from pydantic import ValidationError

    from diffagent.apicall import MAX_LORAS, ApiCall

    call = retrieval.select("a crane <lora:MoXinV1:0.6>", SelectOptions(seed=0, base="sd15"))
    lora = call.loras[0].model_dump()
    with pytest.raises(ValidationError, match="listed twice"):
        ApiCall.model_validate({**call.model_dump(), "loras": [lora, lora]})
    with pytest.raises(ValidationError, match=f"at most {MAX_LORAS}"):
        ApiCall.model_validate({**call.model_dump(), "loras": [{**lora, "id": i} for i in range(MAX_LORAS + 1)]})
