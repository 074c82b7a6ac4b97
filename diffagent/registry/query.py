"""Query text helpers of the registry: whole-word containment and the words a search matches."""

from __future__ import annotations

import re

_WORD = re.compile(r"[\w']+", re.UNICODE)
STOPWORDS = frozenset(
    "a an the of in on at to and or with for by from is are be as it its this that into over under very "
    "best quality masterpiece high highly detailed".split()
)


def _is_word_char(ch: str) -> bool:
    return ch.isalnum() or ch == "_"


def contains_words(text: str, phrase: str) -> bool:
    r"""``phrase`` occurs in ``text`` with no word character right before or after it (the regex
    ``(?<!\w)phrase(?!\w)`` without compiling one pattern per trigger word: thousands per request)."""
    if not phrase:
        return False
    start = text.find(phrase)
    while start != -1:
        end = start + len(phrase)
        if (start == 0 or not _is_word_char(text[start - 1])) and (end == len(text) or not _is_word_char(text[end])):
            return True
        start = text.find(phrase, start + 1)
    return False


def query_words(query: str) -> list[str]:
    """The words a search matches: lower-cased, longer than one character, no stopwords, distinct, at most 32."""
    words = [w.lower() for w in _WORD.findall(query) if len(w) > 1 and w.lower() not in STOPWORDS]
    return list(dict.fromkeys(words))[:32]
