"""Deterministic train/val/test splits by model page.

Sibling images of one model page share prompt templates, so splitting by image leaks the test set
into training (a TF-IDF nearest-neighbour scores checkpoint top-1 0.62 on an image split vs 0.25 on a
page split). Every consumer — ``bench build``, ``registry import --holdout-split``, training — calls
``split_of(attached_model_id)``.
"""

from __future__ import annotations

import hashlib

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
