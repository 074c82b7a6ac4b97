"""The renderer on a full-size SD 1.5 single file and real-size add-ons (``benchmarks/real_size.py``): random
weights in the exact layouts people download, rendered on CPU, every tensor accounted for.

About 2 minutes, 7 GB of RAM and 2.4 GB of disk on two cores; SDXL (24 GB of RAM in fp32) runs from the script.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "real_size.py"


@pytest.mark.slow
def test_full_size_sd15_single_file_loras_embedding_and_vae_render_with_every_tensor_consumed(tmp_path):
    out = tmp_path / "result.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--family",
            "sd15",
            "--workdir",
            str(tmp_path),
            "--size",
            "64",
            "--steps",
            "1",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    result = json.loads(out.read_text())
    assert result["problems"] == []
    written, renders = result["write"], result["render"]["renders"]
    # the full architecture: 860M-parameter UNet, CLIP ViT-L/14 text encoder, the KL-f8 VAE
    assert written["files_mb"]["checkpoint.safetensors"] > 1900
    keys = renders["checkpoint"]["keys"]
    assert keys["missing"] == keys["unexpected"] == keys["unequal"] == []
    assert keys["loaded_tensors"] > 1100 and keys["ignored"] == 13  # the schedule buffers and position_ids
    # kohya LoRA: 16 transformer blocks x (q, k, v, out, ff x 2, proj_in/out...) + 12 text layers x 6
    assert renders["lora"]["modules_reached"] == written["lora_modules"] == {"unet": 192, "te1": 72, "te2": 0}
    assert renders["locon"]["modules_reached"] == written["locon_modules"]
    assert written["locon_modules"]["unet"] > written["lora_modules"]["unet"]
    assert renders["embedding"]["changes_conditioning"]
    assert renders["vae"]["keys"]["missing"] == renders["vae"]["keys"]["unexpected"] == []
