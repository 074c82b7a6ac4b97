"""Renderer overhead and pipeline-switch time on a CUDA machine, with realistic-size random SD 1.5 / SDXL.

For each family this builds a random pipeline from the renderer's own config skeletons (full size: UNet
860M / 2.6B parameters), saves it as a diffusers folder, then times, warm and with identical settings:

- ``bare``: ``pipe(prompt=..., negative_prompt=..., num_inference_steps, guidance_scale, width, height,
  generator)`` on a pipeline loaded with plain diffusers;
- ``diffagent``: ``Renderer.render(call)`` (A1111 prompt encoding, scheduler swap, callbacks, lock), split
  into the denoising part (comparable to ``bare``) and the total including PNG + preview encoding;

and the switch costs: a cached SD 1.5 <-> SDXL switch, a cold load, and a LoRA swap on a loaded checkpoint.
The goal is <= 5 % warm overhead on the denoising part.

    python benchmarks/gpu_render.py                      # CUDA, full size (about 3 minutes on an H100)
    python benchmarks/gpu_render.py --real-size          # + the real-size single files of benchmarks/real_size.py
    python benchmarks/gpu_render.py --device cpu --tiny  # dry run of the same code path, tiny models (CPU)

``--real-size`` then runs ``benchmarks/real_size.py`` for SD 1.5 and SDXL on the same device (the layouts people
download: A1111 single files, kohya LoRA and LoCon, embeddings, a VAE; every tensor accounted for, peak GPU memory)
and adds its results and problems to the report.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROMPT = "cinematic photo of a lighthouse on a cliff in a storm, dramatic light, highly detailed"
NEGATIVE = "blurry, lowres, watermark"


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def build_real(eco: str, out: Path, device: str, dtype) -> None:
    """A random full-size pipeline from the renderer's skeleton configs, saved as a diffusers folder."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from diffagent.render.pipelines import pipeline_class
    from diffagent.render.schedulers import make_scheduler
    from diffagent.render.skeletons import ensure_skeleton

    skel = ensure_skeleton(eco, out.parent / "skeleton-cache")
    with torch.device(device):  # random init on the GPU: seconds instead of minutes on the CPU
        parts = {
            "unet": UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(skel / "unet")),
            "vae": AutoencoderKL.from_config(AutoencoderKL.load_config(skel / "vae")),
            "text_encoder": CLIPTextModel(CLIPTextConfig.from_pretrained(skel / "text_encoder")),
            "tokenizer": CLIPTokenizer.from_pretrained(skel / "tokenizer"),
        }
        if eco == "sdxl":
            parts["text_encoder_2"] = CLIPTextModelWithProjection(
                CLIPTextConfig.from_pretrained(skel / "text_encoder_2"))
            parts["tokenizer_2"] = CLIPTokenizer.from_pretrained(skel / "tokenizer_2")
    for k, v in parts.items():
        if isinstance(v, torch.nn.Module):
            # small weights keep random fp16 activations finite through 70 layers
            with torch.no_grad():
                for p in v.parameters():
                    p.mul_(0.5)
            parts[k] = v.to(dtype)
    sched_cfg = json.loads((skel / "scheduler" / "scheduler_config.json").read_text())
    parts["scheduler"] = make_scheduler("Euler", sched_cfg)
    extra = {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False} \
        if eco == "sd1" else {}
    pipe = pipeline_class(eco)(**parts, **extra)
    pipe.save_pretrained(out, safe_serialization=True)
    del pipe, parts
    import gc

    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def build_tiny(eco: str, out: Path) -> None:
    spec = importlib.util.spec_from_file_location("tiny_models", ROOT / "tests" / "render" / "tiny_models.py")
    tm = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tm)
    tm.quiet_diffusers()
    (tm.build_sd15 if eco == "sd1" else tm.build_sdxl)(out)


def timed(fn, device: str, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        out.append(time.perf_counter() - t)
    return out


def bench_family(eco: str, folder: Path, args, renderer) -> dict:
    import torch

    from diffagent.apicall import ApiCall, ModelRef
    from diffagent.families import Family
    from diffagent.render.pipelines import load_pipeline
    from diffagent.render.schedulers import make_scheduler

    size = args.size or (64 if args.tiny else (512 if eco == "sd1" else 1024))
    family = Family.SD1 if eco == "sd1" else Family.SDXL
    call = ApiCall(checkpoint=ModelRef(id=1 if eco == "sd1" else 2, air=f"bench:{eco}", name=f"random-{eco}",
                                       family=family),
                   prompt=PROMPT, negative_prompt=NEGATIVE, steps=args.steps, cfg_scale=7.0, width=size,
                   height=size, seed=1, sampler=args.sampler, clip_skip=1 if eco == "sd1" else 2)

    # --- bare diffusers, same scheduler options, same device generator
    t = time.perf_counter()
    pipe = load_pipeline(folder, eco, device=args.device, dtype=renderer.dtype, skeleton=None)
    bare_load = time.perf_counter() - t
    pipe.scheduler = make_scheduler(args.sampler, dict(pipe.scheduler.config), seed=1)

    def bare():
        g = torch.Generator(device=args.device).manual_seed(1)
        with torch.inference_mode():
            pipe(prompt=PROMPT, negative_prompt=NEGATIVE, num_inference_steps=args.steps, guidance_scale=7.0,
                 width=size, height=size, generator=g)

    bare()  # warm-up
    bare_times = timed(bare, args.device, args.repeats)
    pipe = None  # frees the pipeline (bare() still refers to the name, so no `del`)
    renderer.cache.clear()

    # --- diffagent renderer
    results = []
    first = renderer.render(call, output_dir=args.out_dir)  # cold: loads the checkpoint
    for _ in range(args.repeats):
        sync(args.device)
        results.append(renderer.render(call, output_dir=args.out_dir))
    pipeline_part = [r.timings["prepare"] + r.timings["encode"] + r.timings["denoise"] for r in results]
    totals = [r.seconds for r in results]
    bare_med = statistics.median(bare_times)
    return {
        "family": eco, "size": size, "steps": args.steps, "sampler": args.sampler,
        "bare_s": round(bare_med, 4), "diffagent_denoise_s": round(statistics.median(pipeline_part), 4),
        "diffagent_total_s": round(statistics.median(totals), 4),
        "overhead_denoise_pct": round(100 * (statistics.median(pipeline_part) / bare_med - 1), 2),
        "overhead_total_pct": round(100 * (statistics.median(totals) / bare_med - 1), 2),
        "save_s": round(statistics.median(r.timings["save"] for r in results), 4),
        "cold_load_s": round(first.timings["load"], 3), "bare_load_s": round(bare_load, 3),
        "call": call,
    }


def bench_switch(rows: list[dict], args, renderer) -> dict:
    """SD 1.5 <-> SDXL with both cached, then with a budget that holds one (reload each time)."""
    a, b = rows[0]["call"], rows[1]["call"]
    quick = {"steps": 1}
    a, b = a.model_copy(update=quick), b.model_copy(update=quick)
    renderer.render(a, output_dir=args.out_dir)
    renderer.render(b, output_dir=args.out_dir)
    warm = [renderer.render(c, output_dir=args.out_dir).timings["load"] for c in (a, b, a, b)]
    budget = renderer.cache.budget_bytes
    renderer.cache.resize(max(e.nbytes for e in renderer.cache._entries.values()))  # room for one
    cold = [renderer.render(c, output_dir=args.out_dir).timings["load"] for c in (a, b, a)]
    renderer.cache.resize(budget)
    return {"switch_cached_s": round(max(warm), 4), "switch_reload_s": [round(x, 3) for x in cold]}


def bench_lora(call, args, renderer, lora_files: dict, tmp: Path) -> dict:
    """Load a random kohya LoRA into the cached checkpoint, then change its weight (no reload)."""
    import torch
    from safetensors.torch import save_file

    from diffagent.apicall import LoraRef

    quick = call.model_copy(update={"steps": 1})
    renderer.render(quick, output_dir=args.out_dir)  # make sure the checkpoint is the cached one
    eco = "sd1" if call.checkpoint.id == 1 else "sdxl"
    entry = next(e for e in renderer.cache._entries.values() if e.ecosystem == eco)
    loads_before = renderer.cache.loads
    g = torch.Generator().manual_seed(0)
    sd = {}
    for name, mod in entry.pipe.unet.named_modules():
        if name.endswith(("attn2.to_k", "attn2.to_v", "attn1.to_q")):
            n = "lora_unet_" + name.replace(".", "_")
            sd[n + ".lora_down.weight"] = torch.randn(8, mod.in_features, generator=g) * 0.01
            sd[n + ".lora_up.weight"] = torch.randn(mod.out_features, 8, generator=g) * 0.01
            sd[n + ".alpha"] = torch.tensor(8.0)
    path = tmp / f"lora-{eco}.safetensors"
    save_file(sd, str(path))
    lora_id = 100 + call.checkpoint.id
    lora = LoraRef(id=lora_id, air="bench:lora", name=f"random-lora-{eco}", family=call.checkpoint.family, weight=0.7)
    lora_files[lora_id] = path
    add = renderer.render(quick.model_copy(update={"loras": [lora]}), output_dir=args.out_dir)
    swap = renderer.render(quick.model_copy(update={"loras": [lora.model_copy(update={"weight": 0.3})]}),
                           output_dir=args.out_dir)
    drop = renderer.render(quick, output_dir=args.out_dir)
    return {"lora_load_s": round(add.timings["prepare"], 4), "lora_reweight_s": round(swap.timings["prepare"], 4),
            "lora_unload_s": round(drop.timings["prepare"], 4),
            "checkpoint_reloads": renderer.cache.loads - loads_before}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiny", action="store_true", help="tiny random models (CPU dry run of the same code path)")
    p.add_argument("--steps", type=int, default=None, help="default 25 (full size) / 4 (tiny)")
    p.add_argument("--size", type=int, default=None, help="default 512 SD 1.5, 1024 SDXL, 64 tiny")
    p.add_argument("--sampler", default="DPM++ 2M Karras")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.add_argument("--real-size", action="store_true",
                   help="also run benchmarks/real_size.py for both families on this device")
    args = p.parse_args(argv)
    args.steps = args.steps or (4 if args.tiny else 25)

    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device here; run with --device cpu --tiny for the dry path", file=sys.stderr)
        return 2
    if args.device == "cpu":
        torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))

    from diffagent.families import Family
    from diffagent.render import Renderer
    from diffagent.render.weights import ResolvedWeights
    from diffagent.settings import Settings

    with tempfile.TemporaryDirectory(prefix="gpu-render-") as tmpdir:
        tmp = Path(tmpdir)
        args.out_dir = tmp / "images"
        folders = {"sd1": tmp / "sd15", "sdxl": tmp / "sdxl"}
        dtype = torch.float16 if args.device.startswith("cuda") else torch.float32
        build_times = {}
        for eco, folder in folders.items():
            t = time.perf_counter()
            build_tiny(eco, folder) if args.tiny else build_real(eco, folder, args.device, dtype)
            build_times[eco] = round(time.perf_counter() - t, 1)

        files = {1: (folders["sd1"], Family.SD1, "checkpoint"), 2: (folders["sdxl"], Family.SDXL, "checkpoint")}

        def resolver(ref):
            if ref.id in files:
                path, fam, kind = files[ref.id]
                return ResolvedWeights(path=path, family=fam, type=kind, name=ref.name)
            return ResolvedWeights(path=lora_files[ref.id], family=ref.family, type="lora", name=ref.name)

        settings = Settings(data_dir=tmp / "data", device=args.device, allow_downloads=False,
                            registry=tmp / "none.db", pipeline_cache_gb=64)
        lora_files: dict[int, Path] = {}
        renderer = Renderer(settings, resolver=resolver)
        rows = [bench_family(eco, folders[eco], args, renderer) for eco in ("sd1", "sdxl")]
        switch = bench_switch(rows, args, renderer)
        loras = {eco: bench_lora(row["call"], args, renderer, lora_files, tmp)
                 for eco, row in zip(("sd1", "sdxl"), rows, strict=True)}
        renderer.close()

    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    report = {"device": device_name, "torch": torch.__version__, "tiny": args.tiny, "build_s": build_times,
              "families": [{k: v for k, v in r.items() if k != "call"} for r in rows], "switch": switch,
              "lora": loras}
    if args.device.startswith("cuda"):
        report["max_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    if args.real_size:
        report["real_size"] = real_size_checks(args)
    print(f"device: {device_name}  torch {torch.__version__}  ({'tiny' if args.tiny else 'full-size'} random weights)")
    print(f"{'family':7} {'size':>5} {'steps':>5} {'bare s':>9} {'ours s':>9} {'overhead':>9} {'+png s':>8} "
          f"{'cold load s':>11}")
    for r in report["families"]:
        print(f"{r['family']:7} {r['size']:>5} {r['steps']:>5} {r['bare_s']:>9.3f} {r['diffagent_denoise_s']:>9.3f} "
              f"{r['overhead_denoise_pct']:>8.1f}% {r['save_s']:>8.3f} {r['cold_load_s']:>11.2f}")
    print(f"switch sd1<->sdxl, both cached: {switch['switch_cached_s']:.4f}s; "
          f"reload each time: {switch['switch_reload_s']} s")
    for eco, lo in loras.items():
        print(f"lora on {eco}: load {lo['lora_load_s']:.3f}s, reweight {lo['lora_reweight_s']:.4f}s, "
              f"unload {lo['lora_unload_s']:.3f}s, checkpoint reloads {lo['checkpoint_reloads']}")
    for fam, res in report.get("real_size", {}).items():
        verdict = "problems: " + "; ".join(res["problems"]) if res["problems"] else "every tensor consumed"
        print(f"real-size {fam}: {verdict}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 1 if any(r["problems"] for r in report.get("real_size", {}).values()) else 0


def real_size_checks(args) -> dict:
    """``benchmarks/real_size.py`` for both families on ``args.device`` (its own processes: their peaks are theirs)."""
    import subprocess

    out = {}
    with tempfile.TemporaryDirectory(prefix="real-size-") as tmpdir:
        for family, size in (("sd15", 512), ("sdxl", 1024)):
            if args.tiny:
                size = 64
            result = Path(tmpdir) / f"{family}.json"
            proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "real_size.py"), "--family", family,
                                   "--workdir", tmpdir, "--device", args.device, "--size", str(args.size or size),
                                   "--steps", str(args.steps), "--out", str(result)], capture_output=True, text=True)
            out[family] = json.loads(result.read_text()) if result.is_file() else {
                "problems": [f"real_size.py exited {proc.returncode}: {proc.stderr[-2000:]}"]}
            for f in Path(tmpdir, family).glob("*.safetensors"):
                f.unlink()  # 9 GB of files per family: free the disk before the next
    return out


if __name__ == "__main__":
    raise SystemExit(main())
