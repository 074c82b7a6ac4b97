"""A1111/Civitai sampler names -> diffusers schedulers.

The table follows diffusers' own mapping (docs: api/schedulers/overview) with two deliberate choices:

- ``DPM++ SDE`` uses ``DPMSolverSDEScheduler`` (the k-diffusion ``sample_dpmpp_sde`` port: stochastic, two
  UNet calls per step, as in A1111) rather than the deterministic ``DPMSolverSinglestepScheduler`` that the
  diffusers table suggests, so that Civitai images made with it are reproduced in kind. It needs ``torchsde``.
- Names with no diffusers equivalent (``DPM++ 2S a``, ``DPM fast``, ``DPM adaptive``, ``DPM++ 3M SDE``) map
  to the closest solver and are marked ``exact=False``; the renderer still runs them, because the registry's
  sample images use them and refusing would make those settings unusable.

diffusers silently drops constructor options a scheduler does not know (``Euler a`` has no
``use_karras_sigmas``), so every option is checked against the class signature before it is used.
"""

from __future__ import annotations

import importlib.util
import inspect
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from diffagent.errors import MissingDependency, UserInputError
from diffagent.samplers import A1111_SAMPLERS, canonical_sampler

_KARRAS = {"use_karras_sigmas": True}
#: solver options a pipeline's stored scheduler config may carry from its previous sampler; they are reset so
#: that e.g. a folder saved with "DPM++ 2M Karras" does not turn a later "DPM++ 2M" into the Karras variant
_SOLVER_KEYS = (
    "use_karras_sigmas",
    "use_exponential_sigmas",
    "use_beta_sigmas",
    "use_lu_lambdas",
    "algorithm_type",
    "solver_order",
    "solver_type",
    "lower_order_final",
    "euler_at_final",
    "final_sigmas_type",
    "noise_sampler_seed",
    "skip_prk_steps",
)
_SDE = {"algorithm_type": "sde-dpmsolver++"}


class SamplerSpec(BaseModel):
    """How one A1111 sampler name is built in diffusers."""

    model_config = ConfigDict(frozen=True)

    scheduler: str = Field(description="diffusers scheduler class name")
    options: dict[str, Any] = Field(default_factory=dict, description="constructor options")
    exact: bool = Field(True, description="False where diffusers has no exact equivalent")
    needs: str | None = Field(None, description="extra Python package the scheduler imports")


def _spec(scheduler: str, exact: bool = True, needs: str | None = None, **options: Any) -> SamplerSpec:
    return SamplerSpec(scheduler=scheduler, options=options, exact=exact, needs=needs)


#: every name in ``diffagent.samplers.A1111_SAMPLERS`` (test_schedulers checks the two stay in step)
SAMPLERS: dict[str, SamplerSpec] = {
    "Euler a": _spec("EulerAncestralDiscreteScheduler"),
    "Euler": _spec("EulerDiscreteScheduler"),
    "LMS": _spec("LMSDiscreteScheduler", needs="scipy"),
    "LMS Karras": _spec("LMSDiscreteScheduler", needs="scipy", **_KARRAS),
    "Heun": _spec("HeunDiscreteScheduler"),
    "DPM2": _spec("KDPM2DiscreteScheduler"),
    "DPM2 Karras": _spec("KDPM2DiscreteScheduler", **_KARRAS),
    "DPM2 a": _spec("KDPM2AncestralDiscreteScheduler"),
    "DPM2 a Karras": _spec("KDPM2AncestralDiscreteScheduler", **_KARRAS),
    "DPM++ 2M": _spec("DPMSolverMultistepScheduler"),
    "DPM++ 2M Karras": _spec("DPMSolverMultistepScheduler", **_KARRAS),
    "DPM++ 2M SDE": _spec("DPMSolverMultistepScheduler", **_SDE),
    "DPM++ 2M SDE Karras": _spec("DPMSolverMultistepScheduler", **_SDE, **_KARRAS),
    "DPM++ SDE": _spec("DPMSolverSDEScheduler", needs="torchsde"),
    "DPM++ SDE Karras": _spec("DPMSolverSDEScheduler", needs="torchsde", **_KARRAS),
    # single-step DPM-Solver++(2S) without the ancestral noise: diffusers has no ancestral variant
    "DPM++ 2S a": _spec("DPMSolverSinglestepScheduler", exact=False),
    "DPM++ 2S a Karras": _spec("DPMSolverSinglestepScheduler", exact=False, **_KARRAS),
    # third-order multistep SDE solver; diffusers' 3rd-order SDE update differs in detail from k-diffusion's
    "DPM++ 3M SDE": _spec("DPMSolverMultistepScheduler", exact=False, solver_order=3, **_SDE),
    "DPM++ 3M SDE Karras": _spec("DPMSolverMultistepScheduler", exact=False, solver_order=3, **_SDE, **_KARRAS),
    "DPM++ 3M SDE Exponential": _spec(
        "DPMSolverMultistepScheduler",
        exact=False,
        solver_order=3,
        timestep_spacing="linspace",
        use_exponential_sigmas=True,
        **_SDE,
    ),
    # k-diffusion's DPM-Solver "fast" (order 3 single-step, uniform log-SNR) and "adaptive" (error-controlled
    # step size, ignores the step count): the nearest fixed-step solver is 3rd-order single-step DPM-Solver
    # (diffusers' own noise-prediction "dpmsolver" variant is deprecated there, so the ++ form is used)
    "DPM fast": _spec("DPMSolverSinglestepScheduler", exact=False, solver_order=3),
    "DPM adaptive": _spec("DPMSolverSinglestepScheduler", exact=False, solver_order=3),
    "DDIM": _spec("DDIMScheduler"),
    "PLMS": _spec("PNDMScheduler", skip_prk_steps=True),
    "UniPC": _spec("UniPCMultistepScheduler"),
    "LCM": _spec("LCMScheduler"),
}


#: every name in ``diffagent.samplers.FLOW_SAMPLERS`` (FLUX.1 and SD 3 are flow-matching models; test_schedulers checks
#: the two stay in step)
FLOW_SAMPLERS: dict[str, SamplerSpec] = {
    "Euler": _spec("FlowMatchEulerDiscreteScheduler"),
    "Heun": _spec("FlowMatchHeunDiscreteScheduler"),
}


def is_flow(scheduler_config: dict[str, Any]) -> bool:
    """The pipeline's own scheduler is a flow-matching one (FLUX.1, SD 3)."""
    return str(scheduler_config.get("_class_name", "")).startswith("FlowMatch")


def sampler_spec(name: str, *, flow: bool = False) -> SamplerSpec:
    """The spec for an A1111 sampler name (any spelling ``canonical_sampler`` accepts); ``flow``: for a
    flow-matching model (FLUX.1, SD 3), whose samplers are ``FLOW_SAMPLERS``."""
    canon = canonical_sampler(name)
    if flow:
        if canon not in FLOW_SAMPLERS:
            raise UserInputError(
                f"FLUX.1 and SD 3 sample by flow matching: use sampler {' or '.join(FLOW_SAMPLERS)}, "
                f"not {name!r} (a sampler of SD 1.x / SDXL)"
            )
        return FLOW_SAMPLERS[canon]
    if canon is None or canon not in SAMPLERS:
        raise UserInputError(f"unknown sampler {name!r}; known samplers: {', '.join(SAMPLERS)}")
    return SAMPLERS[canon]


def _scheduler_class(spec: SamplerSpec) -> type:
    import diffusers

    if spec.needs and importlib.util.find_spec(spec.needs) is None:
        raise MissingDependency(spec.needs, "render")
    return getattr(diffusers, spec.scheduler)


def accepted_options(cls: type) -> set[str]:
    return {p for p in inspect.signature(cls.__init__).parameters if p != "self"}


def make_scheduler(
    name: str, base_config: dict[str, Any], *, seed: int | None = None, shift: float | None = None, **extra: Any
):
    """Build the scheduler for ``name`` from a pipeline's own scheduler config.

    ``base_config`` carries the checkpoint's noise schedule (betas, prediction type, steps offset); the
    sampler only adds solver options on top. ``seed`` feeds schedulers that keep their own noise source
    (``DPMSolverSDEScheduler``'s Brownian tree), which otherwise draw a random seed and break reproducibility.
    """
    spec = sampler_spec(name, flow=is_flow(base_config))
    cls = _scheduler_class(spec)
    options = {**spec.options, **extra}
    accepted = accepted_options(cls)
    if seed is not None and "noise_sampler_seed" in accepted:
        options["noise_sampler_seed"] = seed
    if shift is not None:  # ApiCall.shift: a fixed shift replaces FLUX.1's resolution-dependent (dynamic) one
        options["shift"] = shift
        if "use_dynamic_shifting" in accepted:
            options["use_dynamic_shifting"] = False
    unknown = sorted(k for k in options if k not in accepted)
    if unknown:
        # diffusers would drop these without a word and render with a different sampler than asked
        raise UserInputError(f"{spec.scheduler} (sampler {name!r}) does not accept {unknown}")
    base = {k: v for k, v in dict(base_config).items() if k not in _SOLVER_KEYS}
    return cls.from_config(base, **options)


def known_samplers() -> tuple[str, ...]:
    return A1111_SAMPLERS
