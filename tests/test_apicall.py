"""``ApiCall`` schema 2: ``shift`` for flow-matching models, version-1 calls still valid, what each family refuses,
and the parameters text Forge writes for FLUX.1."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from diffagent.apicall import SCHEMA_VERSION, ApiCall, ModelRef
from diffagent.families import Family
from diffagent.render.png import parse_parameters_text

FLUX = ModelRef(
    id=1,
    air="urn:air:flux1:checkpoint:huggingface:black-forest-labs/FLUX.1-dev",
    name="FLUX.1 [dev]",
    family=Family.FLUX,
)
SD3 = ModelRef(id=2, air="urn:air:sd3:checkpoint:huggingface:stabilityai/sd35", name="SD 3.5 Large", family=Family.SD3)
SDXL = ModelRef(id=3, air="urn:air:sdxl:checkpoint:civitai:1@2", name="Juggernaut XL", family=Family.SDXL)


def test_new_calls_are_schema_2_and_a_version_1_call_still_validates_unchanged():
    assert SCHEMA_VERSION == "2" and ApiCall(checkpoint=SDXL, prompt="a fox").schema_version == "2"
    old = {
        "schema_version": "1",
        "checkpoint": SDXL.model_dump(),
        "prompt": "a fox",
        "sampler": "Euler a",
        "steps": 30,
        "cfg_scale": 6.0,
        "width": 832,
        "height": 1216,
        "seed": 5,
    }
    call = ApiCall.model_validate(old)
    assert call.schema_version == "1" and call.shift is None
    assert call.model_dump(exclude_defaults=True)["schema_version"] == "1"  # not silently upgraded
    with pytest.raises(ValidationError, match="schema_version"):
        ApiCall.model_validate({**old, "schema_version": "3"})


def test_shift_is_taken_by_flow_models_only_and_needs_schema_2():
    assert ApiCall(checkpoint=SD3, prompt="a fox", shift=3.0).shift == 3.0
    assert ApiCall(checkpoint=FLUX, prompt="a fox", sampler="Euler", shift=1.15).shift == 1.15
    with pytest.raises(ValidationError, match="flow-matching models .* drop 'shift'"):
        ApiCall(checkpoint=SDXL, prompt="a fox", shift=3.0)
    with pytest.raises(ValidationError, match="schema_version 2"):
        ApiCall(checkpoint=SD3, prompt="a fox", shift=3.0, schema_version="1")
    with pytest.raises(ValidationError, match="less than or equal to 20"):
        ApiCall(checkpoint=SD3, prompt="a fox", shift=50)


def test_flux_renders_with_euler_only_and_sd3_also_with_heun():
    with pytest.raises(ValidationError, match="FLUX.1 renders with sampler Euler"):
        ApiCall(checkpoint=FLUX, prompt="a fox", sampler="Heun")
    assert ApiCall(checkpoint=SD3, prompt="a fox", sampler="Heun").sampler == "Heun"


def test_flux_parameters_text_says_distilled_guidance_as_forge_writes_it():
    call = ApiCall(
        checkpoint=FLUX, prompt="a fox", sampler="Euler", cfg_scale=3.5, steps=28, width=1024, height=1024, shift=1.5
    )
    text = call.a1111_parameters()
    assert "CFG scale: 1, Distilled CFG Scale: 3.5" in text and "Shift: 1.5" in text
    parsed = parse_parameters_text(text)
    assert parsed.cfg_scale == 1.0 and parsed.distilled_cfg_scale == 3.5 and parsed.shift == 1.5
    sdxl = parse_parameters_text(ApiCall(checkpoint=SDXL, prompt="a fox", cfg_scale=6).a1111_parameters())
    assert sdxl.cfg_scale == 6.0 and sdxl.distilled_cfg_scale is None and sdxl.shift is None
