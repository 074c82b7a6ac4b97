"""``registry scan`` throughput: hashing speed per GB and a second scan served from the hash cache.

    python benchmarks/scan_bench.py [--gb 2] [--files 4] [--registry registry.db]

Writes ``--files`` random-weight ``.safetensors`` files of ``--gb`` GB in total into an A1111-style folder in a
temporary directory (LoRA-sized files beside them), scans it into a copy of the registry twice, and prints the
files found, matched / imported / skipped, seconds per GB hashed, and the second scan's time.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from diffagent.registry.scan import scan
from diffagent.settings import PROJECT_ROOT


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gb", type=float, default=2.0)
    ap.add_argument("--files", type=int, default=4)
    ap.add_argument("--registry", type=Path, default=PROJECT_ROOT / "registry.db")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="scan-bench-") as tmp:
        tmp = Path(tmp)
        db = tmp / "registry.db"
        shutil.copyfile(args.registry, db)
        models = tmp / "webui" / "models"
        (models / "Stable-diffusion").mkdir(parents=True)
        (models / "Lora").mkdir(parents=True)
        rng = np.random.default_rng(0)
        per = int(args.gb * 1e9 / args.files / 2)  # float16 elements per file
        for i in range(args.files):
            save_file(
                {
                    "model.diffusion_model.out.0.weight": rng.standard_normal(per, dtype=np.float32).astype(np.float16),
                    "cond_stage_model.transformer.x": np.zeros(4, np.float16),
                },
                str(models / "Stable-diffusion" / f"ckpt{i}.safetensors"),
            )
            save_file(
                {"lora_unet_x.lora_down.weight": rng.standard_normal(1 << 20, dtype=np.float32).astype(np.float16)},
                str(models / "Lora" / f"lora{i}.safetensors"),
                metadata={"ss_base_model_version": "sd_v1", "ss_output_name": f"Bench LoRA {i}"},
            )
        t = time.perf_counter()
        first = scan(db, [tmp / "webui"], cache_path=tmp / "hashes.json")
        first_s = time.perf_counter() - t
        t = time.perf_counter()
        second = scan(db, [tmp / "webui"], cache_path=tmp / "hashes.json")
        second_s = time.perf_counter() - t
        gb = first.bytes_hashed / 1e9
        print(
            json.dumps(
                {
                    "files": first.files,
                    "gb_hashed": round(gb, 3),
                    "hash_s_per_gb": round(first.hash_seconds / gb, 2),
                    "first_scan_s": round(first_s, 2),
                    "imported": len(first.imported),
                    "skipped": len(first.skipped),
                    "second_scan_s": round(second_s, 3),
                    "second_from_cache": second.from_cache,
                    "second_matched": len(second.matched),
                    "second_imported": len(second.imported),
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
