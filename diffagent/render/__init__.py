"""The renderer: execute an ``ApiCall`` with diffusers and write an A1111-compatible PNG.

``render(call)`` uses a process-wide ``Renderer`` (pipeline cache + device lock) created on first use.
Nothing heavy (torch, diffusers) is imported until a render runs.
"""

from diffagent.render.png import GenerationParameters, parse_png_parameters
from diffagent.render.renderer import RenderCancelled, Renderer, RenderResult, render

__all__ = ["GenerationParameters", "RenderCancelled", "RenderResult", "Renderer", "parse_png_parameters", "render"]
