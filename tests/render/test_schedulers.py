"""Every A1111/Civitai sampler name maps to a scheduler that runs; options are checked, not dropped."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from diffagent.errors import UserInputError
from diffagent.render import schedulers
from diffagent.render.schedulers import FLOW_SAMPLERS, SAMPLERS, SamplerSpec, make_scheduler, sampler_spec
from diffagent.samplers import A1111_SAMPLERS
from diffagent.samplers import FLOW_SAMPLERS as FLOW_SAMPLER_NAMES

SD15_SCHEDULER = {
    "_class_name": "PNDMScheduler",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "steps_offset": 1,
    "skip_prk_steps": True,
    "set_alpha_to_one": False,
    "timestep_spacing": "leading",
}


def test_every_apicall_sampler_is_mapped():
    assert set(SAMPLERS) == set(A1111_SAMPLERS)
    assert set(FLOW_SAMPLERS) == set(FLOW_SAMPLER_NAMES) <= set(A1111_SAMPLERS)  # flow matching: what rebuild picks


@pytest.mark.parametrize("name", A1111_SAMPLERS)
def test_mapping_builds_with_its_options(name):
    spec = SAMPLERS[name]
    sched = make_scheduler(name, SD15_SCHEDULER, seed=1)
    assert type(sched).__name__ == spec.scheduler
    for key, value in spec.options.items():
        assert sched.config[key] == value, f"{key} was dropped"
    assert sched.config["beta_schedule"] == "scaled_linear"  # the checkpoint's noise schedule is kept


def test_karras_suffix_and_sde_options():
    assert make_scheduler("DPM++ 2M Karras", SD15_SCHEDULER).config.use_karras_sigmas is True
    assert make_scheduler("DPM++ 2M", SD15_SCHEDULER).config.use_karras_sigmas is False
    sde = make_scheduler("DPM++ 2M SDE Karras", SD15_SCHEDULER).config
    assert sde.algorithm_type == "sde-dpmsolver++" and sde.use_karras_sigmas is True
    assert make_scheduler("DPM++ SDE", SD15_SCHEDULER, seed=9).config.noise_sampler_seed == 9


def test_base_config_solver_options_do_not_leak():
    karras_base = {**SD15_SCHEDULER, "_class_name": "DPMSolverMultistepScheduler", "use_karras_sigmas": True}
    assert make_scheduler("DPM++ 2M", karras_base).config.use_karras_sigmas is False


def test_unknown_option_is_an_error_not_silently_dropped(monkeypatch):
    bad = dict(
        SAMPLERS,
        **{"Euler a": SamplerSpec(scheduler="EulerAncestralDiscreteScheduler", options={"use_karras_sigmas": True})},
    )
    monkeypatch.setattr(schedulers, "SAMPLERS", bad)
    with pytest.raises(UserInputError, match="does not accept"):
        make_scheduler("Euler a", SD15_SCHEDULER)


def test_unknown_sampler_lists_known_ones():
    with pytest.raises(UserInputError, match="known samplers: Euler a, Euler"):
        sampler_spec("Turbo Magic 9000")
    assert sampler_spec("k_euler_a") is SAMPLERS["Euler a"]


def test_every_sampler_renders(shared_renderer, tiny, tmp_path):
    seen = {}
    for name in A1111_SAMPLERS:  # the tiny SDXL is the faster of the two on CPU; the mapping is family-independent
        res = shared_renderer.render(tiny.call(10, sampler=name, steps=2), output_dir=tmp_path)
        img = np.asarray(Image.open(res.path), dtype=np.float32)
        assert np.isfinite(img).all() and img.std() > 0, name
        assert res.sampler_exact == SAMPLERS[name].exact
        seen[name] = img
    # Karras sigmas really change the trajectory (the option was not dropped on the way)
    assert np.abs(seen["DPM++ 2M"] - seen["DPM++ 2M Karras"]).max() > 0


def test_stochastic_samplers_are_reproducible(shared_renderer, tiny, tmp_path):
    for name in ("DPM++ SDE Karras", "Euler a", "DPM++ 2M SDE"):
        a = shared_renderer.render(tiny.call(1, sampler=name, steps=2, seed=5), output_dir=tmp_path)
        b = shared_renderer.render(tiny.call(1, sampler=name, steps=2, seed=5), output_dir=tmp_path)
        assert np.array_equal(np.asarray(Image.open(a.path)), np.asarray(Image.open(b.path))), name
