"""Style intent: the kinds of checkpoint a request calls for (the judging standard in docs/fit.md)."""

from __future__ import annotations

import pytest

from diffagent.agent.intent import GOOD, OK, WRONG, is_tag_list, style_intent


@pytest.mark.parametrize(
    "prompt",
    [
        "a man sitting alone on a park bench",
        "A cheeseburger",
        "a photo of the food of china",
        "a horse-drawn carriage in the rain",
    ],
)
def test_plain_and_photo_requests_want_photo_or_general_models(prompt):
    it = style_intent(prompt)
    assert it.grade(["photo"]) == GOOD and it.grade(["general", "art"]) == GOOD
    assert it.grade(["anime"]) == WRONG and it.grade(["cartoon"]) == WRONG
    assert it.natural


def test_a_plain_request_has_no_cue_and_accepts_art_and_base_models():
    it = style_intent("a drawer full of socks")  # "drawer" is no drawing
    assert it.cues == ()
    assert it.grade(["art"]) == OK and it.grade(["base"]) == OK
    assert it.grade(["anime", "art"]) == OK  # the best of a model's kinds


@pytest.mark.parametrize(
    "prompt, good, wrong",
    [
        ("an anime girl under cherry blossoms", "anime", "photo"),
        ("a watercolor fox in a misty forest", "art", "anime"),
        ("a drawing of a stork playing a violin", "art", "photo"),
        ("pixel art of a castle", "pixel", "photo"),
        ("a 3d render of a robot, octane", "cartoon", "anime"),
        ("cubism portrait of a woman", "art", "cartoon"),
    ],
)
def test_style_cues(prompt, good, wrong):
    it = style_intent(prompt)
    assert it.cues
    assert it.grade([good]) == GOOD
    assert it.grade([wrong]) == WRONG


def test_models_that_cannot_render_alone_never_fit():
    it = style_intent("a photo of a park bench")
    assert it.grade(["refiner"]) == WRONG and it.grade(["photo", "inpainting"]) == WRONG


def test_primary_kind():
    it = style_intent("a photo of a lighthouse")
    assert it.primary_fits(["photo", "anime"]) and not it.primary_fits(["anime", "photo"])


@pytest.mark.parametrize(
    "prompt, tags",
    [
        ("masterpiece, best quality, 1girl, solo, looking at viewer", True),
        ("(photorealistic:1.4), raw photo, woman", True),
        ("city, night, rain, neon, street, reflections", True),
        ("a photo of a cat, sitting on a windowsill, in the morning", False),
        ("A man sitting alone on a park bench", False),
    ],
)
def test_tag_lists_are_told_from_natural_requests(prompt, tags):
    assert is_tag_list(prompt) is tags
    assert style_intent(prompt).natural is (not tags)
