"""Prompt text as the text encoder should see it.

A1111 prompts carry extra-network tags (``<lora:name:0.8>``, ``<hypernet:...>``) that select resources
rather than describe the picture; A1111 removes them before encoding, and so do we, with the same stripper
the registry and the selector use (``prompttext.strip_resource_tags``; the LoRAs themselves come from
``ApiCall.loras``). Embedding trigger words must appear in the text to have any effect, so a
listed embedding whose token is missing is appended to the prompt it belongs to.
"""

from __future__ import annotations

import re


def has_word(text: str, word: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(word)}(?![\w-])", text, flags=re.IGNORECASE) is not None


def with_tokens(text: str, tokens: list[str]) -> str:
    """``text`` with every token in ``tokens`` present (appended, comma-separated, when missing)."""
    missing = [t for t in tokens if not has_word(text, t)]
    if not missing:
        return text
    return ", ".join([text.strip().rstrip(",")] + missing) if text.strip() else ", ".join(missing)
