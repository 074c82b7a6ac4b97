"""Scorer throughput on full-size random models: CLIP ViT-L-14, HPS v2 ViT-H-14, ImageReward BLIP.

    python benchmarks/gpu_scorers.py                       # CUDA, batch 16, fp16 autocast
    python benchmarks/gpu_scorers.py --device cpu --batch 2 --repeats 1
    python benchmarks/gpu_scorers.py --device cpu --tiny   # plumbing check with the test-size models

The models have the released architectures with random weights (no download), so the numbers
are the real cost of scoring, not real scores. Each metric is timed through the same functions
the scorers use (``openclip_models.cosines``, ``imagereward.reward``), preprocessing of 512x512
PIL images included; model build time is reported separately. Prints a table, and JSON with
``--json``.
"""

from __future__ import annotations

import argparse
import json
import os
import string
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PROMPT = "a watercolor painting of a red fox in a snowy forest, highly detailed"


def random_images(n: int, size: int):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), "RGB") for _ in range(n)]


def sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def build_open_clip(name: str, device: str, tiny_cfg: dict | None, folder: Path):
    import torch

    from diffagent.scoring import openclip_models

    spec = name
    if tiny_cfg is not None:
        spec = str(folder / f"bench-tiny-{name}.json")
        Path(spec).write_text(json.dumps(tiny_cfg))
    torch.manual_seed(0)
    return openclip_models.load(spec, device=device)


def write_bert_vocab(folder: Path, size: int) -> int:
    """A BERT vocab.txt of ``size`` tokens (specials, characters, then filler words)."""
    folder.mkdir(parents=True, exist_ok=True)
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *string.ascii_lowercase, *string.digits]
    tokens += ["##" + c for c in string.ascii_lowercase]
    tokens += [w for w in PROMPT.replace(",", " ").split() if w not in tokens]
    tokens += [f"w{i}" for i in range(size - len(tokens))]
    (folder / "vocab.txt").write_text("\n".join(tokens[:size]) + "\n")
    return min(size, len(tokens))


def build_image_reward(device: str, tiny: bool, folder: Path):
    import torch

    from diffagent.scoring import imagereward_compat

    # the released med_config.json: BERT-base with cross-attention (vocab 30522 + [DEC] + [ENC])
    layers, inter, vocab = (1, 64, 100) if tiny else (12, 3072, 30522)
    n = write_bert_vocab(folder / "bert", vocab)
    med = folder / "med_config.json"
    med.write_text(
        json.dumps(
            {
                "architectures": ["BertModel"],
                "attention_probs_dropout_prob": 0.1,
                "hidden_act": "gelu",
                "hidden_dropout_prob": 0.1,
                "hidden_size": 768,
                "initializer_range": 0.02,
                "intermediate_size": inter,
                "layer_norm_eps": 1e-12,
                "max_position_embeddings": 512,
                "model_type": "bert",
                "num_attention_heads": 12,
                "num_hidden_layers": layers,
                "pad_token_id": 0,
                "type_vocab_size": 2,
                "vocab_size": n + 2,
                "encoder_width": 1024,
                "add_cross_attention": True,
            }
        )
    )
    vit = (
        imagereward_compat.VitSpec(64, 1, 1, 16)
        if tiny
        else imagereward_compat.VitSpec(*imagereward_compat.RELEASED_VIT)
    )
    torch.manual_seed(0)
    model = imagereward_compat.build(med, imagereward_compat.load_tokenizer(folder / "bert"), vit)
    model.device = device
    return model.to(device).eval()


TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--batch", type=int, default=16, help="images per scoring call (the batch size)")
    ap.add_argument("--repeats", type=int, default=3, help="timed calls after one warm-up call")
    ap.add_argument("--image-size", type=int, default=512)
    ap.add_argument("--fp32", action="store_true", help="no fp16 autocast on CUDA")
    ap.add_argument("--metrics", default="clip_score,hps_v2,image_reward")
    ap.add_argument("--tiny", action="store_true", help="test-size models (plumbing check)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from diffagent.scoring import imagereward, openclip_models
    from diffagent.scoring._torchvision import ensure_torchvision

    ensure_torchvision()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("CUDA is not available; use --device cpu", file=sys.stderr)
        return 2
    half = args.device.startswith("cuda") and not args.fp32
    images = random_images(args.batch, args.image_size)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for metric in [m.strip() for m in args.metrics.split(",") if m.strip()]:
            t0 = time.perf_counter()
            if metric == "clip_score":
                label = "open_clip ViT-L-14"
                m = build_open_clip("ViT-L-14", args.device, TINY_CLIP if args.tiny else None, folder)
                fn = lambda m=m: openclip_models.cosines(m, PROMPT, images, batch_size=args.batch, half=half)  # noqa: E731
            elif metric == "hps_v2":
                label = "open_clip ViT-H-14"
                m = build_open_clip("ViT-H-14", args.device, TINY_CLIP if args.tiny else None, folder)
                fn = lambda m=m: openclip_models.cosines(m, PROMPT, images, batch_size=args.batch, half=half)  # noqa: E731
            elif metric == "image_reward":
                label = "BLIP ViT-L/16 + BERT-base"
                m = build_image_reward(args.device, args.tiny, folder)
                fn = lambda m=m: imagereward.reward(m, PROMPT, images, batch_size=args.batch, half=half)  # noqa: E731
            else:
                print(f"unknown metric {metric!r}", file=sys.stderr)
                return 2
            sync(args.device)
            build_s = time.perf_counter() - t0
            params = sum(p.numel() for p in (m.model if hasattr(m, "model") else m).parameters())
            if args.device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
            fn()  # warm-up: kernels, autotuning, lazy inits
            sync(args.device)
            times = []
            for _ in range(args.repeats):
                t = time.perf_counter()
                scores = fn()
                sync(args.device)
                times.append(time.perf_counter() - t)
            assert len(scores) == args.batch
            best = min(times)
            row = {
                "metric": metric,
                "model": label + (" (tiny)" if args.tiny else ""),
                "params_M": round(params / 1e6, 1),
                "build_s": round(build_s, 2),
                "batch": args.batch,
                "batch_s": round(best, 4),
                "images_per_s": round(args.batch / best, 2),
                "peak_mem_GiB": (
                    round(torch.cuda.max_memory_allocated() / 2**30, 2) if args.device.startswith("cuda") else None
                ),
            }
            rows.append(row)
            del m, fn
            if args.device.startswith("cuda"):
                torch.cuda.empty_cache()
    device_name = (
        torch.cuda.get_device_name() if args.device.startswith("cuda") else f"cpu ({torch.get_num_threads()} threads)"
    )
    if args.json:
        print(
            json.dumps(
                {"device": device_name, "fp16_autocast": half, "image_size": args.image_size, "rows": rows}, indent=2
            )
        )
        return 0
    print(f"device: {device_name}, fp16 autocast: {half}, {args.image_size}px random images, best of {args.repeats}")
    print("| metric | model | params (M) | build (s) | batch | s / batch | images / s | peak GiB |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['metric']} | {r['model']} | {r['params_M']} | {r['build_s']} | {r['batch']} | {r['batch_s']} | "
            f"{r['images_per_s']} | {r['peak_mem_GiB'] if r['peak_mem_GiB'] is not None else '-'} |"
        )
    if len(rows) > 1:
        total = sum(r["batch_s"] for r in rows)
        print(f"unified metric (all {len(rows)} scorers): {args.batch / total:.2f} images / s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
