"""Shared fixtures: tiny scorer weights built once per session, offline, on one thread."""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)
sys.path.insert(0, str(Path(__file__).parent))  # tiny_scorers is a helper module, not a test

import tiny_scorers  # noqa: E402


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> tiny_scorers.TinyWeights:
    return tiny_scorers.write_all(tmp_path_factory.mktemp("tiny-scorers"))


@pytest.fixture(scope="session")
def tiny_config(tiny_weights):
    return tiny_scorers.scoring_config(tiny_weights)
