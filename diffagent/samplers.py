"""The A1111/Civitai sampler names, the vocabulary of ``ApiCall.sampler``.

The list is Civitai's own (``civitai_sampler_list`` in its generation constants); the renderer maps
each name to a diffusers scheduler in ``diffagent.render.schedulers``.
"""

from __future__ import annotations

A1111_SAMPLERS: tuple[str, ...] = (
    "Euler a",
    "Euler",
    "LMS",
    "Heun",
    "DPM2",
    "DPM2 a",
    "DPM++ 2S a",
    "DPM++ 2M",
    "DPM++ SDE",
    "DPM++ 2M SDE",
    "DPM++ 3M SDE",
    "DPM fast",
    "DPM adaptive",
    "LMS Karras",
    "DPM2 Karras",
    "DPM2 a Karras",
    "DPM++ 2S a Karras",
    "DPM++ 2M Karras",
    "DPM++ SDE Karras",
    "DPM++ 2M SDE Karras",
    "DPM++ 3M SDE Karras",
    "DPM++ 3M SDE Exponential",
    "DDIM",
    "PLMS",
    "UniPC",
    "LCM",
)

#: the samplers of flow-matching models (FLUX.1, SD 3), as Forge and ComfyUI name them
FLOW_SAMPLERS: tuple[str, ...] = ("Euler", "Heun")
#: FLUX.1's pipeline hands the scheduler its own sigmas, which diffusers' flow-matching Heun does not take
FLUX_SAMPLERS: tuple[str, ...] = ("Euler",)


def flow_samplers(ecosystem: str) -> tuple[str, ...]:
    """The samplers a FLUX.1 (``flux``) or SD 3 (``sd3``) checkpoint renders with."""
    return FLUX_SAMPLERS if ecosystem == "flux" else FLOW_SAMPLERS


_BY_KEY = {s.lower().replace(" ", ""): s for s in A1111_SAMPLERS}
# spellings that occur in real generation metadata
_BY_KEY.update({"eulera": "Euler a", "k_euler_a": "Euler a", "k_euler": "Euler", "dpm++2mkarras": "DPM++ 2M Karras"})


def canonical_sampler(name: str | None) -> str | None:
    """'dpm++ 2m karras' -> 'DPM++ 2M Karras'; None when the name is not a known sampler."""
    if not name:
        return None
    return _BY_KEY.get(name.strip().lower().replace(" ", ""))
