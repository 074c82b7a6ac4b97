"""Prompt text utilities shared by the registry (indexing creators' prompts) and the agent."""

from __future__ import annotations

import html
import re
from html.parser import HTMLParser

# A1111 extra-network tags: <lora:name:0.8>, <lyco:name:1>, <hypernet:name:0.5>, <lora:name> ...
_RESOURCE_TAG = re.compile(r"<\s*(lora|lyco|locon|hypernet|embedding|ti|lcm)\s*:[^<>]*>", re.IGNORECASE)
_LORA_TAG = re.compile(r"<\s*(?:lora|lyco|locon)\s*:\s*([^:<>]+?)\s*(?::\s*([-+]?\d*\.?\d+)\s*)?(?::[^<>]*)?>", re.I)
_SEPARATORS = re.compile(r"\s*,(?:\s*,)+\s*")
# spaces and tabs, and non-breaking and other Unicode spaces (``&nbsp;`` is everywhere in Civitai HTML)
_SPACES = re.compile(r"[^\S\n\r]+")
_ZERO_WIDTH = re.compile(r"[\u200b\u200c\u200d\u2060\ufeff]")


def has_visible_text(text: str) -> bool:
    """Whether ``text`` holds anything a model could draw from: a character that is not a space, a control
    character (NUL, tab) or an invisible format character (zero-width space, BOM)."""
    import unicodedata

    return any(not ch.isspace() and unicodedata.category(ch) not in ("Cc", "Cf", "Zs", "Zl", "Zp") for ch in text)


def strip_resource_tags(prompt: str) -> str:
    """Remove A1111 resource tags and tidy the separators they leave behind; weighting such as
    ``(word:1.2)`` is kept."""
    text = _RESOURCE_TAG.sub("", prompt or "")
    text = _SEPARATORS.sub(", ", text)
    text = _SPACES.sub(" ", text)
    return text.strip().strip(",").strip()


def lora_tags(prompt: str) -> list[tuple[str, float]]:
    """``<lora:name:0.7>`` tags in a prompt as (name, weight); weight 1.0 when omitted."""
    out = []
    for m in _LORA_TAG.finditer(prompt or ""):
        out.append((m.group(1), float(m.group(2)) if m.group(2) else 1.0))
    return out


class _TextExtractor(HTMLParser):
    _BREAKS = {"p", "br", "li", "div", "h1", "h2", "h3", "h4", "tr", "ul", "ol"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag in self._BREAKS:
            self.parts.append("\n")

    def handle_data(self, data):
        self.parts.append(data)


def html_to_text(markup: str | None, max_chars: int = 4000) -> str:
    """Civitai descriptions are HTML; keep readable plain text, paragraphs on their own lines."""
    if not markup:
        return ""
    parser = _TextExtractor()
    try:
        parser.feed(markup)
        parser.close()
        text = "".join(parser.parts)
    except Exception:  # malformed markup: fall back to stripping tags
        text = html.unescape(re.sub(r"<[^>]+>", " ", markup))
    lines = [_SPACES.sub(" ", _ZERO_WIDTH.sub("", ln)).strip() for ln in text.splitlines()]
    text = "\n".join(ln for ln in lines if ln)
    return text[:max_chars]
