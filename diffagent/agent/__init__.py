"""DiffAgent's selector: retrieval + a GGUF LLM under constrained decoding + parameter rebuild."""

from diffagent.agent.selector import Selection, Selector

__all__ = ["Selection", "Selector"]
