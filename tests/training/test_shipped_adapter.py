"""The trained adapter shipped in diffagent/agent/adapters: intact, loadable by llama.cpp over the default
model, and usable by the selector."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

import diffagent.agent

ADAPTERS = Path(diffagent.agent.__file__).parent / "adapters"
ADAPTER = ADAPTERS / "diffagent-gemma3-270m-lora.gguf"


def test_card_describes_the_file():
    card = json.loads(ADAPTER.with_suffix(".json").read_text())
    assert card["file"] == ADAPTER.name
    assert hashlib.sha256(ADAPTER.read_bytes()).hexdigest() == card["sha256"]
    assert ADAPTER.stat().st_size < 20 * 2**20
    assert "not the image metric" in card["reward"]  # the CPU proxy reward is named as such
    from diffagent.training.config import load_config

    assert load_config(ADAPTERS / card["config"]).export.outtype == "q8_0"


def test_adapter_loads_over_the_default_model_and_changes_its_logits():
    pytest.importorskip("llama_cpp")
    from diffagent.agent.llm import default_model_path
    from diffagent.training.export import logit_shift

    base = default_model_path()
    assert logit_shift(base, ADAPTER, [2, 108, 2292, 236787]) > 0.5


def test_selector_with_the_adapter_returns_valid_calls(tiny_registry, tiny_registry_path):
    pytest.importorskip("llama_cpp")
    from diffagent.agent.llm import LlamaBackend
    from diffagent.agent.selector import Selector
    from diffagent.settings import Settings
    from diffagent.tools import SelectOptions

    backend = LlamaBackend(lora_path=ADAPTER, n_ctx=2048, n_threads=1)
    sel = Selector(
        tiny_registry, Settings(registry=tiny_registry_path, selector="llm", llm_lora=ADAPTER), backend=backend
    )
    calls = sel.select_many("watercolor painting of a fox in a misty forest", SelectOptions(seed=1)).calls
    assert calls and all(len(tiny_registry.versions([c.checkpoint.id])) == 1 for c in calls)
