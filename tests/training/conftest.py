"""Fixtures for the training tests; the helpers live in ``tiny_llm.py``."""

from __future__ import annotations

import pytest
from tiny_llm import ToyTokenizer, tiny_gemma


@pytest.fixture()
def toy_tok() -> ToyTokenizer:
    return ToyTokenizer()


@pytest.fixture()
def tiny_model():
    return tiny_gemma()
