"""Real-size SD 1.5 / SDXL files, written offline with random weights in the layouts people download, rendered on
CPU through the renderer, with every tensor of every file accounted for.

Files (one set per family, fp16 unless said):
- the checkpoint as one single file with A1111/Civitai key names (``model.diffusion_model.*``,
  ``first_stage_model.*``, ``cond_stage_model.*`` / ``conditioner.embedders.*``), plus the LDM noise-schedule buffers
  (and SD 1.5's ``position_ids``) that real files carry and every loader ignores;
- a kohya-ss LoRA (rank 8, alpha 4) on every linear / 1x1 layer of the UNet's transformer blocks and every attention
  and MLP layer of the text encoder(s), with kohya's module names (SD 1.5: diffusers paths; SDXL: the original
  ``input_blocks`` / ``middle_block`` / ``output_blocks`` paths) and ``lora_te`` / ``lora_te1`` / ``lora_te2``;
- a LoCon (LyCORIS) file: the same plus the ResNet, down- and up-sampler convolutions (3x3 kernels);
- a textual-inversion embedding (SD 1.5 ``emb_params``; SDXL ``clip_l`` + ``clip_g``);
- a standalone VAE in the LDM layout (fp32 for SD 1.5 as vae-ft-mse ships, fp16 for SDXL).

Then, in a fresh process (so each stage reports its own peak RSS), ``Renderer.render`` runs a call with the
checkpoint alone, with each LoRA kind, with the embedding's token and with the VAE, and checks:
- checkpoint and VAE: the loaded pipeline, mapped back to the file's layout, has exactly the file's keys (0 missing,
  0 unexpected besides the schedule buffers) and bit-identical values;
- each LoRA: the number of modules carrying its adapter, per component, equals the number of modules in the file;
- the embedding: its token is in the tokenizer(s) and changes the prompt's conditioning;
- every render: an image that is not blank (NaN activations decode to one flat colour), and one that differs from
  the checkpoint-alone image where the add-on should change it.

    python benchmarks/real_size.py --family sd15 --workdir /tmp/realsize
    python benchmarks/real_size.py --family sdxl --workdir /tmp/realsize --size 128 --steps 2
    python benchmarks/real_size.py --family sdxl --workdir /tmp/realsize --device cuda --size 1024 --steps 20

The last is the CUDA check of the same files (fp16 on the GPU; the report adds peak GPU memory). Measured here on
CPU (2 cores): SD 1.5 files 2.4 GB, render peak RSS 7.2 GB; SDXL files 6.9 GB, write peak 10.4 GB, render peak
20.3 GB (the CPU renders in fp32).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ECO = {"sd15": "sd1", "sdxl": "sdxl"}
#: the noise-schedule buffers of an LDM checkpoint: in every original SD file, read by no diffusers loader
SCHEDULE = (
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
)
POSITION_IDS = "cond_stage_model.transformer.text_model.embeddings.position_ids"
RANK, ALPHA = 8, 4.0
TOKEN = "realemb"


def tiny_models():
    """The LDM <-> diffusers key writers the render tests use (``tests/render/tiny_models.py``)."""
    spec = importlib.util.spec_from_file_location("tiny_models", ROOT / "tests" / "render" / "tiny_models.py")
    tm = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tm)
    tm.quiet_diffusers()
    return tm


def peak_rss_gb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)


# ------------------------------------------------------------------------------------------------- writing


def random_components(eco: str, skel: Path):
    """Full-size UNet, VAE and text encoder(s) from the renderer's skeleton configs, random, in fp16."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(0)

    def half(module):
        with torch.no_grad():  # small weights keep random activations finite through ~70 layers
            for p in module.parameters():
                p.mul_(0.5)
        return module.half().eval()

    parts = SimpleNamespace(
        unet=half(UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(skel / "unet"))),
        vae=half(AutoencoderKL.from_config(AutoencoderKL.load_config(skel / "vae"))),
        text_encoder=half(CLIPTextModel(CLIPTextConfig.from_pretrained(skel / "text_encoder"))),
    )
    if eco == "sdxl":
        cfg2 = CLIPTextConfig.from_pretrained(skel / "text_encoder_2")
        parts.text_encoder_2 = half(CLIPTextModelWithProjection(cfg2))
    return parts


def ldm_module_name(tm, parts, path: str) -> str:
    """kohya's name for a UNet module of SDXL: its path in the original (LDM) UNet."""
    u = parts.unet.config
    key = next(
        iter(
            tm._unet_to_ldm(
                {path + ".weight": None},
                len(u.block_out_channels),
                u.layers_per_block,
                ["CrossAttn" in t for t in u.down_block_types],
                ["CrossAttn" in t for t in u.up_block_types],
            )
        )
    )
    return key.removeprefix("model.diffusion_model.").removesuffix(".weight")


def unet_targets(parts, conv: bool) -> list[tuple[str, object]]:
    """(diffusers path, module) of what kohya trains: Linear and 1x1 Conv2d inside transformer blocks; with ``conv``
    (LoCon) also every Conv2d and Linear of the ResNets, down- and up-samplers."""
    import torch

    out = []
    for name, m in parts.unet.named_modules():
        if not isinstance(m, torch.nn.Linear | torch.nn.Conv2d):
            continue
        in_transformer = ".attentions." in name
        in_resnet = any(s in name for s in (".resnets.", ".downsamplers.", ".upsamplers."))
        if in_transformer and (isinstance(m, torch.nn.Linear) or m.kernel_size == (1, 1)):
            out.append((name, m))
        elif conv and in_resnet:
            out.append((name, m))
    return out


def lora_pair(m, g):
    import torch

    if isinstance(m, torch.nn.Linear):
        down = torch.randn(RANK, m.in_features, generator=g)
        up = torch.randn(m.out_features, RANK, generator=g)
    else:
        down = torch.randn(RANK, m.in_channels, *m.kernel_size, generator=g)
        up = torch.randn(m.out_channels, RANK, 1, 1, generator=g)
    return (down * 0.05).half(), (up * 0.05).half()


def write_lora(tm, eco: str, parts, path: Path, conv: bool, seed: int) -> dict[str, int]:
    """A kohya / LoCon file; returns the number of modules per component ('unet', 'te1', 'te2')."""
    import torch
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    sd, counts = {}, {"unet": 0, "te1": 0, "te2": 0}

    def put(name: str, m, component: str) -> None:
        down, up = lora_pair(m, g)
        sd[f"{name}.lora_down.weight"], sd[f"{name}.lora_up.weight"] = down, up
        sd[f"{name}.alpha"] = torch.tensor(ALPHA, dtype=torch.float16)
        counts[component] += 1

    for path_, m in unet_targets(parts, conv):
        module = ldm_module_name(tm, parts, path_) if eco == "sdxl" else path_
        put("lora_unet_" + module.replace(".", "_"), m, "unet")
    encoders = (
        [("lora_te1", "te1", parts.text_encoder), ("lora_te2", "te2", parts.text_encoder_2)]
        if eco == "sdxl"
        else [("lora_te", "te1", parts.text_encoder)]
    )
    for prefix, component, te in encoders:
        cfg = te.config
        for i in range(cfg.num_hidden_layers):
            h, f = cfg.hidden_size, cfg.intermediate_size
            shapes = {
                "self_attn_q_proj": (h, h),
                "self_attn_k_proj": (h, h),
                "self_attn_v_proj": (h, h),
                "self_attn_out_proj": (h, h),
                "mlp_fc1": (h, f),
                "mlp_fc2": (f, h),
            }
            for sub, (n_in, n_out) in shapes.items():
                put(
                    f"{prefix}_text_model_encoder_layers_{i}_{sub}",
                    torch.nn.Linear(n_in, n_out, device="meta"),
                    component,
                )
    save_file(
        sd,
        str(path),
        metadata={
            "ss_network_module": "lycoris.kohya" if conv else "networks.lora",
            "ss_network_dim": str(RANK),
            "ss_network_alpha": str(ALPHA),
        },
    )
    return counts


def write(family: str, out: Path) -> dict:
    import torch
    from safetensors.torch import save_file

    from diffagent.render.skeletons import ensure_skeleton

    tm = tiny_models()
    eco = ECO[family]
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    parts = random_components(eco, ensure_skeleton(eco, out / "skeletons"))
    t_init = time.perf_counter() - t0
    t = time.perf_counter()
    sd = tm.to_ldm_sdxl(parts) if eco == "sdxl" else tm.to_ldm_sd15(parts)
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    for name in SCHEDULE:  # the values do not matter to any loader; the keys and shapes are the real ones
        sd[name] = (betas if name == "betas" else torch.cumprod(1 - betas, 0)).float()
    if eco == "sd1":
        sd[POSITION_IDS] = torch.arange(77, dtype=torch.int64)[None]
    save_file(sd, str(out / "checkpoint.safetensors"))
    del sd
    lora = write_lora(tm, eco, parts, out / "lora-kohya.safetensors", conv=False, seed=1)
    locon = write_lora(tm, eco, parts, out / "locon.safetensors", conv=True, seed=2)
    g = torch.Generator().manual_seed(3)
    if eco == "sdxl":
        emb = {"clip_l": torch.randn(2, 768, generator=g).half(), "clip_g": torch.randn(2, 1280, generator=g).half()}
    else:
        emb = {"emb_params": torch.randn(2, 768, generator=g).half()}
    save_file(emb, str(out / "embedding.safetensors"))
    torch.manual_seed(4)
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_config(parts.vae.config)
    v = vae.config
    vsd = {
        k.removeprefix("first_stage_model."): (t.half() if eco == "sdxl" else t).contiguous()
        for k, t in tm._vae_to_ldm(vae.state_dict(), len(v.block_out_channels), v.layers_per_block).items()
    }
    save_file(vsd, str(out / "vae.safetensors"))
    files = {p.name: round(p.stat().st_size / 2**20, 1) for p in sorted(out.glob("*.safetensors"))}
    return {
        "family": family,
        "random_init_s": round(t_init, 1),
        "write_s": round(time.perf_counter() - t, 1),
        "files_mb": files,
        "lora_modules": lora,
        "locon_modules": locon,
        "peak_rss_gb": peak_rss_gb(),
    }


# ----------------------------------------------------------------------------------------------- rendering


def account(mapped: dict, path: Path, ignorable: set[str]) -> dict:
    """The loaded weights (mapped back to the file's keys) against the file: missing, unexpected, unequal."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        keys = set(f.keys())
        unequal = [
            k
            for k in sorted(keys & mapped.keys())
            if not f.get_tensor(k).to(mapped[k].dtype).equal(mapped[k].detach().cpu())
        ]
    return {
        "file_tensors": len(keys),
        "loaded_tensors": len(mapped),
        "missing": sorted(mapped.keys() - keys),
        "unexpected": sorted(keys - mapped.keys() - ignorable),
        "ignored": len(keys & ignorable),
        "unequal": unequal,
    }


def reached(pipe, adapter: str) -> dict[str, int]:
    """Modules carrying ``adapter`` per component."""

    def count(module) -> int:
        return sum(1 for _, m in module.named_modules() if hasattr(m, "lora_A") and adapter in m.lora_A)

    out = {"unet": count(pipe.unet), "te1": count(pipe.text_encoder), "te2": 0}
    if getattr(pipe, "text_encoder_2", None) is not None:
        out["te2"] = count(pipe.text_encoder_2)
    return out


def render(family: str, out: Path, size: int, steps: int, device: str = "cpu") -> dict:
    import numpy as np
    import torch
    from PIL import Image

    from diffagent.apicall import ApiCall, EmbeddingRef, LoraRef, ModelRef
    from diffagent.families import Family
    from diffagent.render import Renderer
    from diffagent.render.encode import encode
    from diffagent.render.loras import adapter_name
    from diffagent.render.weights import ResolvedWeights
    from diffagent.settings import Settings

    tm = tiny_models()
    eco = ECO[family]
    fam = Family.SD1 if eco == "sd1" else Family.SDXL
    files = {
        1: ("checkpoint.safetensors", "checkpoint"),
        2: ("lora-kohya.safetensors", "lora"),
        3: ("locon.safetensors", "locon"),
        4: ("embedding.safetensors", "embedding"),
        5: ("vae.safetensors", "vae"),
    }

    def resolver(ref):
        name, kind = files[ref.id]
        return ResolvedWeights(path=out / name, sha256=f"{ref.id:064x}", family=fam, type=kind, name=name)

    def ref(i: int) -> dict:
        return {"id": i, "air": f"urn:air:bench:{i}", "name": files[i][0].split(".")[0], "family": fam}

    settings = Settings(
        data_dir=out / "data", device=device, allow_downloads=False, registry=out / "none.db", pipeline_cache_gb=64.0
    )
    from diffagent.render.skeletons import ensure_skeleton

    renderer = Renderer(settings, resolver=resolver, skeletons={eco: ensure_skeleton(eco, out / "skeletons")})
    torch.set_num_threads(os.cpu_count() or 1)
    base = {
        "checkpoint": ModelRef(**ref(1)),
        "prompt": "a lighthouse on a cliff, dramatic light",
        "negative_prompt": "blurry",
        "steps": steps,
        "cfg_scale": 7.0,
        "width": size,
        "height": size,
        "seed": 1,
        "sampler": "Euler",
        "clip_skip": 1 if eco == "sd1" else 2,
    }
    results, images = {}, {}

    def run(label: str, **extra):
        res = renderer.render(ApiCall(**{**base, **extra}), output_dir=out / "images")
        img = np.asarray(Image.open(res.path), dtype=np.int16)
        images[label] = img
        results[label] = {
            "load_s": round(res.timings.get("load", 0.0), 1),
            "prepare_s": round(res.timings.get("prepare", 0.0), 2),
            "encode_s": round(res.timings.get("encode", 0.0), 2),
            "step_s": round(res.timings.get("denoise", 0.0) / steps, 2),
            "total_s": round(res.seconds, 1),
            "image_std": round(float(img.std()), 1),
            "peak_rss_gb": peak_rss_gb(),
        }
        if device.startswith("cuda"):
            results[label]["peak_gpu_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        return renderer.cache._entries[next(iter(renderer.cache._entries))].pipe  # noqa: SLF001 - one entry

    pipe = run("checkpoint")
    mapped = tm.to_ldm_sdxl(pipe) if eco == "sdxl" else tm.to_ldm_sd15(pipe)
    ignorable = set(SCHEDULE) | ({POSITION_IDS} if eco == "sd1" else set())
    results["checkpoint"]["keys"] = account(mapped, out / "checkpoint.safetensors", ignorable)
    del mapped
    for i, label in ((2, "lora"), (3, "locon")):
        pipe = run(label, loras=[LoraRef(**ref(i), weight=0.8)])
        results[label]["modules_reached"] = reached(pipe, adapter_name(i))
        results[label]["changes_image"] = bool(np.abs(images[label] - images["checkpoint"]).max() > 0)
    pipe = run("embedding", embeddings=[EmbeddingRef(**ref(4), token=TOKEN)])
    tokenizers = [pipe.tokenizer] + ([pipe.tokenizer_2] if eco == "sdxl" else [])
    with torch.inference_mode():
        a = encode(pipe, eco, f"a lighthouse, {TOKEN}", "", base["clip_skip"])["prompt_embeds"]
        b = encode(pipe, eco, "a lighthouse, ", "", base["clip_skip"])["prompt_embeds"]
    results["embedding"]["token_in_tokenizers"] = [TOKEN in t.get_added_vocab() for t in tokenizers]
    results["embedding"]["changes_conditioning"] = bool((a - b).abs().max() > 0)
    pipe = run("vae", vae=ModelRef(**ref(5)))
    v = pipe.vae.config
    vmapped = {
        k.removeprefix("first_stage_model."): t
        for k, t in tm._vae_to_ldm(pipe.vae.state_dict(), len(v.block_out_channels), v.layers_per_block).items()
    }
    results["vae"]["keys"] = account(vmapped, out / "vae.safetensors", set())
    results["vae"]["changes_image"] = bool(np.abs(images["vae"] - images["embedding"]).max() > 0)
    renderer.close()
    return {
        "family": family,
        "size": size,
        "steps": steps,
        "device": device,
        "renders": results,
        "peak_rss_gb": peak_rss_gb(),
    }


def verdict(written: dict, rendered: dict) -> list[str]:
    """What failed, in words (empty: everything was consumed and reached)."""
    bad = []
    r = rendered["renders"]
    bad += [f"{label}: a blank image" for label, res in r.items() if res["image_std"] == 0]
    for label in ("checkpoint", "vae"):
        k = r[label]["keys"]
        if k["missing"] or k["unexpected"] or k["unequal"]:
            bad.append(
                f"{label}: {len(k['missing'])} missing, {len(k['unexpected'])} unexpected, "
                f"{len(k['unequal'])} unequal (first: {(k['missing'] + k['unexpected'] + k['unequal'])[:3]})"
            )
    for label in ("lora", "locon"):
        want, got = written[f"{label}_modules"], r[label]["modules_reached"]
        if want != got:
            bad.append(f"{label}: the file has {want} modules per component, the pipeline took {got}")
        if not r[label]["changes_image"]:
            bad.append(f"{label}: the image did not change")
    if not all(r["embedding"]["token_in_tokenizers"]) or not r["embedding"]["changes_conditioning"]:
        bad.append(f"embedding: {r['embedding']}")
    if not r["vae"]["changes_image"]:
        bad.append("vae: the image did not change")
    return bad


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--family", choices=sorted(ECO), default="sd15")
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--size", type=int, default=128, help="render width and height (multiple of 8)")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="'cpu' (fp32) or 'cuda' (fp16)")
    ap.add_argument(
        "--stage",
        choices=["all", "write", "render"],
        default="all",
        help="internal: each stage runs in its own process for its own peak RSS",
    )
    ap.add_argument("--out", type=Path, help="write the JSON results here too")
    args = ap.parse_args()
    folder = args.workdir / args.family
    if args.stage == "write":
        print(json.dumps(write(args.family, folder)))
        return
    if args.stage == "render":
        print(json.dumps(render(args.family, folder, args.size, args.steps, args.device)))
        return
    stages = {}
    for stage in ("write", "render"):
        cmd = [
            sys.executable,
            __file__,
            "--family",
            args.family,
            "--workdir",
            str(args.workdir),
            "--stage",
            stage,
            "--size",
            str(args.size),
            "--steps",
            str(args.steps),
            "--device",
            args.device,
        ]
        t = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            sys.exit(f"{stage} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
        stages[stage] = json.loads(proc.stdout.strip().splitlines()[-1])
        stages[stage]["wall_s"] = round(time.perf_counter() - t, 1)
    result = {**stages, "problems": verdict(stages["write"], stages["render"])}
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text)
    sys.exit(1 if result["problems"] else 0)


if __name__ == "__main__":
    main()
