"""The A1111 ``parameters`` chunk: written, read back, and parsed like A1111 does."""

from __future__ import annotations

import pytest
from PIL import Image

from diffagent.errors import UserInputError
from diffagent.render.png import format_fields, parse_parameters_text, parse_png_parameters, png_bytes, preview_png

A1111_SAMPLE = """masterpiece, (best quality:1.2), 1girl, <lora:add_detail:0.5>
Negative prompt: (worst quality:1.4), easynegative
Steps: 28, Sampler: DPM++ 2M Karras, CFG scale: 7.5, Seed: 3653316600, Size: 512x768, Model hash: 6ce0161689, \
Model: dreamshaper_8, Clip skip: 2, Lora hashes: "add_detail: 7c6bad76eb54", Version: v1.6.0"""


def test_parses_real_a1111_text():
    p = parse_parameters_text(A1111_SAMPLE)
    assert p.prompt.startswith("masterpiece") and p.prompt.endswith("<lora:add_detail:0.5>")
    assert p.negative_prompt == "(worst quality:1.4), easynegative"
    assert (p.steps, p.sampler, p.cfg_scale, p.seed, p.size, p.clip_skip, p.model) == (
        28,
        "DPM++ 2M Karras",
        7.5,
        3653316600,
        (512, 768),
        2,
        "dreamshaper_8",
    )
    assert p.settings["Lora hashes"] == "add_detail: 7c6bad76eb54"


def test_multiline_prompt_and_no_negative():
    p = parse_parameters_text("line one\nline two\nSteps: 5, Sampler: Euler, Seed: 1")
    assert p.prompt == "line one\nline two" and p.negative_prompt == "" and p.steps == 5


def test_quoting_round_trip():
    fields = {"Model": "name, with: commas", "Seed": 1, "Steps": 2, "Note": 'say "hi"'}
    p = parse_parameters_text("x\nNegative prompt: y\n" + format_fields(fields))
    assert p.settings["Model"] == "name, with: commas" and p.settings["Note"] == 'say "hi"'


def test_png_chunk_round_trip_unicode(tmp_path):
    text = "東京の猫, café\nNegative prompt: ぼやけ\nSteps: 3, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 8x8"
    data = png_bytes(Image.new("RGB", (8, 8)), text)
    assert parse_png_parameters(data).prompt == "東京の猫, café"
    path = tmp_path / "x.png"
    path.write_bytes(data)
    assert parse_png_parameters(path).negative_prompt == "ぼやけ"


def test_png_without_chunk_is_a_clear_error():
    with pytest.raises(UserInputError, match="no 'parameters'"):
        parse_png_parameters(png_bytes(Image.new("RGB", (8, 8))))


def test_preview_bounds_big_noisy_images():
    import numpy as np

    noise = Image.fromarray(np.random.default_rng(0).integers(0, 255, (1536, 1024, 3), dtype=np.uint8))
    data = preview_png(noise, "p\nSteps: 1, Sampler: Euler, Seed: 1")
    im = Image.open(__import__("io").BytesIO(data))
    assert max(im.size) <= 512 and len(data) <= 512 * 1024
    assert im.size[1] > im.size[0]  # aspect kept
    assert parse_png_parameters(data).steps == 1
