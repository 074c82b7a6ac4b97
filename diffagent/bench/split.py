"""Deterministic train/val/test splits by model page.

Sibling images of one model page share prompt templates, so splitting by image leaks the test set
into training (a TF-IDF nearest-neighbour scores checkpoint top-1 0.62 on an image split vs 0.25 on a
page split). Every consumer — ``bench build``, ``registry import --holdout-split``, training — calls
``split_of(attached_model_id)``.
"""

from __future__ import annotations

import hashlib

from diffagent.errors import UserInputError

#: fractions of pages: train 80 %, val 10 %, test 10 %
SPLITS = (("train", 80), ("val", 10), ("test", 10))


def split_of(page_model_id: int, salt: str = "diffagent-v1") -> str:
    h = int.from_bytes(hashlib.sha256(f"{salt}:{int(page_model_id)}".encode()).digest()[:8], "big") % 100
    edge = 0
    for name, pct in SPLITS:
        edge += pct
        if h < edge:
            return name
    return SPLITS[-1][0]


PAGES = ("all", "even", "odd")


def page_half(pairs: list, pages: str) -> list:
    """The pairs whose model page id is even or odd ('all' keeps every pair): the two halves that a card encoder and
    the ranker are trained on, so the ranker's card feature comes from an encoder that never saw the pair's page."""
    if pages not in PAGES:
        raise UserInputError(f"pages must be one of {', '.join(PAGES)}, not {pages!r}")
    return pairs if pages == "all" else [p for p in pairs if p.page_model_id % 2 == (pages == "odd")]
