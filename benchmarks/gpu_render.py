"""Renderer overhead and pipeline-switch time on a CUDA machine, with realistic-size random SD 1.5 / SDXL
(and, with ``--flow``, FLUX.1 / Stable Diffusion 3 memory and time per CPU-offload mode).

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
    python benchmarks/gpu_render.py --flow               # + FLUX.1 and SD 3 per offload mode (--only-flow: those alone)
    python benchmarks/gpu_render.py --device cpu --tiny --flow  # dry run of the flow part too

``--real-size`` then runs ``benchmarks/real_size.py`` for SD 1.5 and SDXL on the same device (the layouts people
download: A1111 single files, kohya LoRA and LoCon, embeddings, a VAE; every tensor accounted for, peak GPU memory)
and adds its results and problems to the report.

``--flow`` then builds, one family at a time, a random FLUX.1 [dev] (12B transformer, T5-XXL + CLIP-L encoders: about
34 GB in bf16) and an SD 3.5 Medium-like pipeline (2.5B MMDiT, T5-XXL + CLIP-L + CLIP-G), saves it as a diffusers
folder, and renders it through ``Renderer`` once per ``--offload-modes`` entry (``Settings.offload``; a fresh renderer
each), reporting the cold load, the denoising time and the peak CUDA memory of the cold render (load included) and of
warm renders, so the report shows what model and sequential CPU offload save and cost. It also checks that a
transformer LoRA changes the image without reloading the checkpoint. FLUX.1's folder takes about 34 GB of disk; each
family's is deleted before the next is built.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
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
                CLIPTextConfig.from_pretrained(skel / "text_encoder_2")
            )
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
    extra = (
        {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False} if eco == "sd1" else {}
    )
    pipe = pipeline_class(eco)(**parts, **extra)
    pipe.save_pretrained(out, safe_serialization=True)
    del pipe, parts
    import gc

    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


@functools.cache
def helper_module(name: str):
    """A helper module of ``tests/render`` (``tiny_models``, ``flow_layouts``), loaded by file path."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "tests" / "render" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_tiny(eco: str, out: Path) -> None:
    tm = helper_module("tiny_models")
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
    call = ApiCall(
        checkpoint=ModelRef(id=1 if eco == "sd1" else 2, air=f"bench:{eco}", name=f"random-{eco}", family=family),
        prompt=PROMPT,
        negative_prompt=NEGATIVE,
        steps=args.steps,
        cfg_scale=7.0,
        width=size,
        height=size,
        seed=1,
        sampler=args.sampler,
        clip_skip=1 if eco == "sd1" else 2,
    )

    # --- bare diffusers, same scheduler options, same device generator
    t = time.perf_counter()
    pipe = load_pipeline(folder, eco, device=args.device, dtype=renderer.dtype, skeleton=None)
    bare_load = time.perf_counter() - t
    pipe.scheduler = make_scheduler(args.sampler, dict(pipe.scheduler.config), seed=1)

    def bare():
        g = torch.Generator(device=args.device).manual_seed(1)
        with torch.inference_mode():
            pipe(
                prompt=PROMPT,
                negative_prompt=NEGATIVE,
                num_inference_steps=args.steps,
                guidance_scale=7.0,
                width=size,
                height=size,
                generator=g,
            )

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
        "family": eco,
        "size": size,
        "steps": args.steps,
        "sampler": args.sampler,
        "bare_s": round(bare_med, 4),
        "diffagent_denoise_s": round(statistics.median(pipeline_part), 4),
        "diffagent_total_s": round(statistics.median(totals), 4),
        "overhead_denoise_pct": round(100 * (statistics.median(pipeline_part) / bare_med - 1), 2),
        "overhead_total_pct": round(100 * (statistics.median(totals) / bare_med - 1), 2),
        "save_s": round(statistics.median(r.timings["save"] for r in results), 4),
        "cold_load_s": round(first.timings["load"], 3),
        "bare_load_s": round(bare_load, 3),
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
    swap = renderer.render(
        quick.model_copy(update={"loras": [lora.model_copy(update={"weight": 0.3})]}), output_dir=args.out_dir
    )
    drop = renderer.render(quick, output_dir=args.out_dir)
    return {
        "lora_load_s": round(add.timings["prepare"], 4),
        "lora_reweight_s": round(swap.timings["prepare"], 4),
        "lora_unload_s": round(drop.timings["prepare"], 4),
        "checkpoint_reloads": renderer.cache.loads - loads_before,
    }


# --- FLUX.1 and Stable Diffusion 3 ----------------------------------------------------------------------------------

#: the full-size text encoders these families ship: CLIP ViT-L/14's text tower, OpenCLIP ViT-bigG/14's (SD 3's
#: ``text_encoder_2``) and the encoder of T5 v1.1 XXL (4.8B parameters)
CLIP_L = dict(
    vocab_size=49408,
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    max_position_embeddings=77,
    projection_dim=768,
    hidden_act="quick_gelu",
)
CLIP_G = dict(
    vocab_size=49408,
    hidden_size=1280,
    intermediate_size=5120,
    num_hidden_layers=32,
    num_attention_heads=20,
    max_position_embeddings=77,
    projection_dim=1280,
    hidden_act="gelu",
)
T5_XXL = dict(
    vocab_size=32128,
    d_model=4096,
    d_kv=64,
    d_ff=10240,
    num_layers=24,
    num_heads=64,
    feed_forward_proj="gated-gelu",
    tie_word_embeddings=False,
)
#: their VAE (16 latent channels, no quant convs); only the latent scaling differs between the two
FLOW_VAE = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=16,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    norm_num_groups=32,
    sample_size=1024,
    use_quant_conv=False,
    use_post_quant_conv=False,
)
FLOW_VAE_SCALING = {
    "flux": dict(scaling_factor=0.3611, shift_factor=0.1159),
    "sd3": dict(scaling_factor=1.5305, shift_factor=0.0609),
}
OFFLOAD_MODES = ("auto", "none", "model", "sequential")


@contextmanager
def init_on(device: str, dtype):
    """Modules created inside get their random weights directly on ``device`` in ``dtype``: seconds on a GPU for a
    12B transformer, and no float32 copy (48 GB for FLUX.1's) on the way."""
    import torch

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


def build_flow_real(eco: str, out: Path, device: str, dtype):
    """A random FLUX.1 [dev] or SD 3.5 Medium-like pipeline with full-size text encoders and VAE, built on ``device``
    and saved as a diffusers folder at ``out``; returns the pipeline. The tokenizers are tiny_models' offline ones:
    their ids (< 514 for CLIP, < 100 for T5) index the full vocabularies."""
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        FluxPipeline,
        FluxTransformer2DModel,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTextModelWithProjection,
        CLIPTokenizer,
        T5Config,
        T5EncoderModel,
        T5TokenizerFast,
    )

    tm, layouts = helper_module("tiny_models"), helper_module("flow_layouts")
    n_clip = tm.write_byte_tokenizer(out / "_tokenizer")
    tm.write_byte_tokenizer(out / "_tokenizer_2", pad_token="!")  # SD 3's second CLIP pads with "!"
    n_t5 = tm.write_t5_tokenizer(out / "_t5")
    assert n_clip <= CLIP_L["vocab_size"] and n_t5 <= T5_XXL["vocab_size"]
    # the byte tokenizer's start/end ids, so that CLIP pools its output at the end-of-text token
    ids = dict(bos_token_id=n_clip - 2, eos_token_id=n_clip - 1, pad_token_id=n_clip - 1)
    with init_on(device, dtype):
        vae = AutoencoderKL(**FLOW_VAE, **FLOW_VAE_SCALING[eco])
        t5 = T5EncoderModel(T5Config(**T5_XXL))
        if eco == "flux":
            parts = dict(
                transformer=FluxTransformer2DModel(**layouts.FLUX_DEV),
                text_encoder=CLIPTextModel(CLIPTextConfig(**CLIP_L, **ids)),
                text_encoder_2=t5,
            )
        else:
            parts = dict(
                transformer=SD3Transformer2DModel(**layouts.SD35_MEDIUM),
                text_encoder=CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_L, **ids)),
                text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_G, **ids)),
                text_encoder_3=t5,
            )
    clip, t5_tokenizer = CLIPTokenizer.from_pretrained(out / "_tokenizer"), T5TokenizerFast.from_pretrained(out / "_t5")
    if eco == "flux":
        scheduler = FlowMatchEulerDiscreteScheduler(
            shift=3.0,
            use_dynamic_shifting=True,
            base_shift=0.5,
            max_shift=1.15,
            base_image_seq_len=256,
            max_image_seq_len=4096,
        )
        pipe = FluxPipeline(scheduler=scheduler, vae=vae, tokenizer=clip, tokenizer_2=t5_tokenizer, **parts)
    else:
        pipe = StableDiffusion3Pipeline(
            scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
            vae=vae,
            tokenizer=clip,
            tokenizer_2=CLIPTokenizer.from_pretrained(out / "_tokenizer_2"),
            tokenizer_3=t5_tokenizer,
            **parts,
        )
    pipe.save_pretrained(out, safe_serialization=True)
    return pipe


def build_flow(eco: str, out: Path, args) -> Path:
    """The family's random pipeline as a diffusers folder at ``out`` (tiny_models' with ``--tiny``, else full size in
    bf16 on a CUDA device) and a random transformer LoRA for it; returns the LoRA's path."""
    import gc

    import torch

    tm = helper_module("tiny_models")
    tm.quiet_diffusers()
    if args.tiny:
        pipe = (tm.build_flux if eco == "flux" else tm.build_sd3)(out)
    else:
        dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
        pipe = build_flow_real(eco, out, args.device, dtype)
    lora = tm.save_transformer_lora(pipe, out.parent / f"lora-{eco}.safetensors")
    del pipe
    gc.collect()
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()
    return lora


def pixels(result):
    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(result.path), dtype=np.int16)


def flow_lora(renderer, call, lora, base, out_dir: Path) -> dict:
    """The LoRA on the loaded checkpoint: it must change the image (``base``: the same call without it) and must not
    reload the checkpoint."""
    import numpy as np

    loads_before = renderer.cache.loads
    result = renderer.render(call.model_copy(update={"loras": [lora]}), output_dir=out_dir)
    return {
        "offload": result.offload,
        "lora_load_s": round(result.timings["prepare"], 4),
        "changed_image": not np.array_equal(pixels(base), pixels(result)),
        "checkpoint_reloads": renderer.cache.loads - loads_before,
    }


def bench_flow(eco: str, folder: Path, lora_path: Path, args, tmp: Path) -> dict:
    """One flow family through ``Renderer``, a fresh one per offload mode: cold load, warm denoising, peak CUDA memory
    of each phase; the LoRA check on the model-offload renderer (else the first mode's). Mismatches go to
    ``problems``."""
    import numpy as np
    import torch

    from diffagent.apicall import ApiCall, LoraRef, ModelRef
    from diffagent.families import Family
    from diffagent.render import Renderer
    from diffagent.render.weights import ResolvedWeights
    from diffagent.settings import Settings

    cuda = args.device.startswith("cuda")
    family = Family.FLUX if eco == "flux" else Family.SD3
    ckpt_id = 3 if eco == "flux" else 4
    size = args.size or (64 if args.tiny else 1024)
    # FLUX.1 takes no negative prompt; cfg_scale is its distilled guidance
    call = ApiCall(
        checkpoint=ModelRef(id=ckpt_id, air=f"bench:{eco}", name=f"random-{eco}", family=family),
        prompt=PROMPT,
        negative_prompt="" if eco == "flux" else NEGATIVE,
        steps=args.flow_steps,
        cfg_scale=3.5 if eco == "flux" else 5.0,
        width=size,
        height=size,
        seed=1,
        sampler="Euler",
    )
    lora = LoraRef(id=100 + ckpt_id, air="bench:lora", name=f"random-lora-{eco}", family=family, weight=1.0)
    files = {call.checkpoint.id: (folder, "diffusers"), lora.id: (lora_path, "lora")}

    def resolver(ref):
        path, kind = files[ref.id]
        return ResolvedWeights(path=path, family=family, type=kind, name=ref.name)

    def reset_peak() -> None:
        if cuda:
            torch.cuda.reset_peak_memory_stats()

    def peak_gib() -> float | None:
        return round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None

    out = {
        "family": eco,
        "size": size,
        "steps": call.steps,
        "cfg_scale": call.cfg_scale,
        "modes": [],
        "lora": None,
        "problems": [],
    }
    images = tmp / "images"
    # the LoRA check runs where loading is hardest: into a pipeline under model offload's hooks, when that mode runs
    lora_mode = "model" if "model" in args.offload_modes else args.offload_modes[0]
    for mode in args.offload_modes:
        renderer = Renderer(
            Settings(
                data_dir=tmp / "data",
                device=args.device,
                allow_downloads=False,
                registry=tmp / "none.db",
                pipeline_cache_gb=64,
                offload=mode,
            ),
            resolver=resolver,
        )
        try:
            reset_peak()
            first = renderer.render(call, output_dir=images)  # cold: loads the checkpoint
            peak_cold = peak_gib()
            reset_peak()
            warm = [renderer.render(call, output_dir=images) for _ in range(args.repeats)]
            peak_warm = peak_gib()
            if mode == lora_mode:
                out["lora"] = flow_lora(renderer, call, lora, first, images)
        except torch.cuda.OutOfMemoryError:
            out["modes"].append({"mode": mode, "error": "CUDA out of memory"})
            out["problems"].append(f"offload {mode}: CUDA out of memory")
            continue
        finally:
            renderer.close()  # drops the pipeline; the cache empties CUDA's allocator
        out["modes"].append(
            {
                "mode": mode,
                "offload": first.offload,
                "cold_load_s": round(first.timings["load"], 3),
                "denoise_s": round(statistics.median(r.timings["denoise"] for r in warm), 4),
                "total_s": round(statistics.median(r.seconds for r in warm), 4),
                "peak_cold_gib": peak_cold,
                "peak_warm_gib": peak_warm,
            }
        )
        # CPU ignores offload; on CUDA the pipeline must run as asked ('auto' chooses by free memory)
        expected = mode if cuda else "none"
        if expected != "auto" and first.offload != expected:
            out["problems"].append(f"offload {mode}: the renderer ran with {first.offload!r}, expected {expected!r}")
        if np.ptp(pixels(first)) == 0:
            out["problems"].append(f"offload {mode}: the image is one flat color (NaN or saturated activations)")
    if out["lora"] is not None:
        if not out["lora"]["changed_image"]:
            out["problems"].append("the LoRA did not change the image")
        if out["lora"]["checkpoint_reloads"]:
            out["problems"].append("the LoRA reloaded the checkpoint")
    return out


def bench_flows(args) -> dict:
    """FLUX.1 then SD 3, each built, benchmarked and deleted before the next (FLUX.1's folder is 34 GB)."""
    out = {}
    with tempfile.TemporaryDirectory(prefix="gpu-render-flow-") as tmpdir:
        tmp = Path(tmpdir)
        for eco in ("flux", "sd3"):
            t = time.perf_counter()
            lora = build_flow(eco, tmp / eco, args)
            build_s = round(time.perf_counter() - t, 1)
            out[eco] = {"build_s": build_s, **bench_flow(eco, tmp / eco, lora, args, tmp)}
            shutil.rmtree(tmp / eco)
    return out


def print_flow(flow: dict) -> None:
    def gib(x: float | None) -> str:
        return "-" if x is None else f"{x:.2f}"

    print(
        f"{'flow':5} {'offload':24} {'cold load s':>11} {'denoise s':>9} {'total s':>8} {'peak cold GiB':>13} "
        f"{'peak warm GiB':>13} {'vs none':>8}"
    )
    for eco, res in flow.items():
        none = next((m for m in res["modes"] if m["mode"] == "none" and "error" not in m), None)
        for m in res["modes"]:
            if "error" in m:
                print(f"{eco:5} {m['mode']:24} {m['error']}")
                continue
            mode = m["mode"] if m["offload"] == m["mode"] else f"{m['mode']} (ran {m['offload']})"
            saved = (
                "-"
                if none is None or none["peak_warm_gib"] is None
                else f"{m['peak_warm_gib'] - none['peak_warm_gib']:+.2f}"
            )
            print(
                f"{eco:5} {mode:24} {m['cold_load_s']:>11.2f} {m['denoise_s']:>9.3f} {m['total_s']:>8.3f} "
                f"{gib(m['peak_cold_gib']):>13} {gib(m['peak_warm_gib']):>13} {saved:>8}"
            )
        if lo := res["lora"]:
            print(
                f"lora on {eco} (offload {lo['offload']}): {'changed' if lo['changed_image'] else 'did NOT change'} "
                f"the image, load {lo['lora_load_s']:.3f}s, checkpoint reloads {lo['checkpoint_reloads']}"
            )
        verdict = "problems: " + "; ".join(res["problems"]) if res["problems"] else "no problems"
        print(
            f"{eco}: {res['size']} px, {res['steps']} steps, cfg {res['cfg_scale']:g}, built in {res['build_s']}s; "
            f"{verdict}"
        )


def bench_sd(args) -> dict:
    """SD 1.5 and SDXL: build, bare vs renderer, switches, LoRAs (the report's ``families``, ``switch``, ``lora``)."""
    import torch

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

        settings = Settings(
            data_dir=tmp / "data",
            device=args.device,
            allow_downloads=False,
            registry=tmp / "none.db",
            pipeline_cache_gb=64,
        )
        lora_files: dict[int, Path] = {}
        renderer = Renderer(settings, resolver=resolver)
        rows = [bench_family(eco, folders[eco], args, renderer) for eco in ("sd1", "sdxl")]
        switch = bench_switch(rows, args, renderer)
        loras = {
            eco: bench_lora(row["call"], args, renderer, lora_files, tmp)
            for eco, row in zip(("sd1", "sdxl"), rows, strict=True)
        }
        renderer.close()

    out = {
        "build_s": build_times,
        "families": [{k: v for k, v in r.items() if k != "call"} for r in rows],
        "switch": switch,
        "lora": loras,
    }
    if args.device.startswith("cuda"):  # before --flow resets the peak for its own phases
        out["max_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return out


def print_sd(report: dict) -> None:
    print(
        f"{'family':7} {'size':>5} {'steps':>5} {'bare s':>9} {'ours s':>9} {'overhead':>9} {'+png s':>8} "
        f"{'cold load s':>11}"
    )
    for r in report["families"]:
        print(
            f"{r['family']:7} {r['size']:>5} {r['steps']:>5} {r['bare_s']:>9.3f} {r['diffagent_denoise_s']:>9.3f} "
            f"{r['overhead_denoise_pct']:>8.1f}% {r['save_s']:>8.3f} {r['cold_load_s']:>11.2f}"
        )
    switch = report["switch"]
    print(
        f"switch sd1<->sdxl, both cached: {switch['switch_cached_s']:.4f}s; "
        f"reload each time: {switch['switch_reload_s']} s"
    )
    for eco, lo in report["lora"].items():
        print(
            f"lora on {eco}: load {lo['lora_load_s']:.3f}s, reweight {lo['lora_reweight_s']:.4f}s, "
            f"unload {lo['lora_unload_s']:.3f}s, checkpoint reloads {lo['checkpoint_reloads']}"
        )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiny", action="store_true", help="tiny random models (CPU dry run of the same code path)")
    p.add_argument(
        "--steps", type=int, default=None, help="default 25 (full size) / 4 (tiny); the flow families default to 4"
    )
    p.add_argument("--size", type=int, default=None, help="default 512 SD 1.5, 1024 SDXL / FLUX.1 / SD 3, 64 tiny")
    p.add_argument("--sampler", default="DPM++ 2M Karras", help="SD 1.5 / SDXL sampler (the flow families: Euler)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.add_argument(
        "--real-size", action="store_true", help="also run benchmarks/real_size.py for both families on this device"
    )
    p.add_argument(
        "--flow",
        action="store_true",
        help="also FLUX.1 [dev] and an SD 3.5 Medium-like pipeline, once per offload mode",
    )
    p.add_argument("--only-flow", action="store_true", help="--flow without the SD 1.5 / SDXL part")
    p.add_argument(
        "--offload-modes",
        default=None,
        help="comma-separated Settings.offload modes for --flow (auto, none, model, sequential); "
        "default none,model,sequential on CUDA, none on CPU",
    )
    args = p.parse_args(argv)
    args.flow = args.flow or args.only_flow
    args.flow_steps = args.steps or 4
    args.steps = args.steps or (4 if args.tiny else 25)
    cuda = args.device.startswith("cuda")
    args.offload_modes = (args.offload_modes or ("none,model,sequential" if cuda else "none")).split(",")
    if unknown := [m for m in args.offload_modes if m not in OFFLOAD_MODES]:
        p.error(f"unknown offload mode(s) {', '.join(unknown)}; use {', '.join(OFFLOAD_MODES)}")

    import torch

    if cuda and not torch.cuda.is_available():
        print("no CUDA device here; run with --device cpu --tiny for the dry path", file=sys.stderr)
        return 2
    if args.device == "cpu":
        torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))

    device_name = torch.cuda.get_device_name() if cuda else "cpu"
    report = {"device": device_name, "torch": torch.__version__, "tiny": args.tiny}
    if not args.only_flow:
        report.update(bench_sd(args))
    if args.flow:
        report["flow"] = bench_flows(args)
    if args.real_size:
        report["real_size"] = real_size_checks(args)
    print(f"device: {device_name}  torch {torch.__version__}  ({'tiny' if args.tiny else 'full-size'} random weights)")
    if not args.only_flow:
        print_sd(report)
    if args.flow:
        print_flow(report["flow"])
    for fam, res in report.get("real_size", {}).items():
        verdict = "problems: " + "; ".join(res["problems"]) if res["problems"] else "every tensor consumed"
        print(f"real-size {fam}: {verdict}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    problems = [res["problems"] for res in [*report.get("real_size", {}).values(), *report.get("flow", {}).values()]]
    return 1 if any(problems) else 0


def real_size_checks(args) -> dict:
    """``benchmarks/real_size.py`` for both families on ``args.device`` (its own processes: their peaks are theirs)."""
    import subprocess

    out = {}
    with tempfile.TemporaryDirectory(prefix="real-size-") as tmpdir:
        for family, size in (("sd15", 512), ("sdxl", 1024)):
            if args.tiny:
                size = 64
            result = Path(tmpdir) / f"{family}.json"
            proc = subprocess.run(
                [
                    sys.executable,
                    str(ROOT / "benchmarks" / "real_size.py"),
                    "--family",
                    family,
                    "--workdir",
                    tmpdir,
                    "--device",
                    args.device,
                    "--size",
                    str(args.size or size),
                    "--steps",
                    str(args.steps),
                    "--out",
                    str(result),
                ],
                capture_output=True,
                text=True,
            )
            out[family] = (
                json.loads(result.read_text())
                if result.is_file()
                else {"problems": [f"real_size.py exited {proc.returncode}: {proc.stderr[-2000:]}"]}
            )
            for f in Path(tmpdir, family).glob("*.safetensors"):
                f.unlink()  # 9 GB of files per family: free the disk before the next
    return out


if __name__ == "__main__":
    raise SystemExit(main())
