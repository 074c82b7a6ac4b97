"""DiffAgent's selector: retrieval + a GGUF LLM under constrained decoding + parameter rebuild.

``Selector`` and ``Selection`` are imported on first use, so ``diffagent.agent.options`` (the tools' argument
types) can be imported without loading the selector."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from diffagent.agent.selector import Selection, Selector

__all__ = ["Selection", "Selector"]


def __getattr__(name: str):
    if name in __all__:
        from diffagent.agent import selector

        return getattr(selector, name)
    raise AttributeError(f"module 'diffagent.agent' has no attribute {name!r}")
