"""Rebuilding a full ``ApiCall`` from a choice (checkpoint + LoRAs), as the DiffAgent paper does:
the LLM only chooses models; parameters come from data.

Order of evidence for each parameter: what creators used with this checkpoint (usage statistics
from their sample images, when there are enough), then the creator's recommended settings, then
the family's defaults (Civitai's generation defaults and size presets).
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping

from diffagent.apicall import MAX_SEED, ApiCall, EmbeddingRef, LoraRef
from diffagent.families import FLOW, Family, compatible, ecosystem_of
from diffagent.registry.info import UsageInfo, VersionInfo
from diffagent.samplers import canonical_sampler, flow_samplers

MIN_IMAGES = 3  # usage statistics from fewer images than this are ignored

FAMILY_DEFAULTS: dict[str, dict] = {
    "sd1": {
        "sampler": "DPM++ 2M Karras",
        "steps": 25,
        "cfg_scale": 7.0,
        "size": (512, 768),
        "clip_skip": 1,
        "negative_prompt": "lowres, bad anatomy, bad hands, text, error, worst quality, low quality, blurry",
    },
    "sdxl": {
        "sampler": "DPM++ 2M Karras",
        "steps": 30,
        "cfg_scale": 6.0,
        "size": (832, 1216),
        "clip_skip": 1,
        "negative_prompt": "lowres, bad anatomy, bad hands, text, watermark, worst quality, low quality",
    },
    # flow matching: Euler is the reference sampler; FLUX.1 is guidance-distilled (cfg_scale is its distilled
    # guidance, 3.5 for [dev]; [schnell] ignores it) and takes no negative prompt; SD 3.5 Large: 28 steps, CFG 3.5-4.5
    "flux": {
        "sampler": "Euler",
        "steps": 28,
        "cfg_scale": 3.5,
        "size": (1024, 1024),
        "clip_skip": 1,
        "negative_prompt": "",
    },
    "sd3": {
        "sampler": "Euler",
        "steps": 28,
        "cfg_scale": 4.5,
        "size": (1024, 1024),
        "clip_skip": 1,
        "negative_prompt": "",
    },
}
PONY_NEGATIVE = "score_6, score_5, score_4, lowres, bad anatomy, bad hands, watermark"
SIZE_LIMITS = {"sd1": (256, 1024), "sdxl": (640, 1536), "flux": (512, 2048), "sd3": (512, 2048)}
#: step counts outside creators' usual range are clamped (10-60); distilled flow models run in 1-8 steps
STEP_LIMITS = {"flux": (1, 60), "sd3": (1, 60)}


def _mode(counter: Mapping[str, int]) -> str | None:
    if not counter:
        return None
    return max(sorted(counter), key=lambda k: counter[k])


def _median(counter: Mapping[str, int]) -> float | None:
    items = sorted((float(k), n) for k, n in counter.items() if _is_number(k))
    total = sum(n for _, n in items)
    if not total:
        return None
    acc = 0
    for value, n in items:
        acc += n
        if acc * 2 >= total:
            return value
    return items[-1][0]


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def _size(value: str | None, eco: str) -> tuple[int, int] | None:
    if not value:
        return None
    m = re.fullmatch(r"(\d+)x(\d+)", value)
    if not m:
        return None
    w, h = (int(m.group(1)) // 8 * 8, int(m.group(2)) // 8 * 8)
    lo, hi = SIZE_LIMITS.get(eco, (256, 2048))
    if not (lo <= w <= hi and lo <= h <= hi):
        return None
    return w, h


def rebuild_parameters(checkpoint: VersionInfo, usage: UsageInfo | None) -> dict:
    """Sampler, steps, cfg, size, clip skip and negative prompt for ``checkpoint``, with provenance."""
    eco = ecosystem_of(checkpoint.family)
    d = FAMILY_DEFAULTS.get(eco, FAMILY_DEFAULTS["sd1"])
    rec = checkpoint.recommended or {}
    u = usage if usage and usage.n_images >= MIN_IMAGES else None
    src = "usage" if u else ("recommended" if rec else "defaults")

    sampler = canonical_sampler(_mode(u.samplers)) if u else None
    sampler = sampler or canonical_sampler(rec.get("sampler")) or d["sampler"]
    steps = _median(u.steps) if u else None
    lo_steps, hi_steps = STEP_LIMITS.get(eco, (10, 60))
    steps = int(min(max(steps or rec.get("steps") or d["steps"], lo_steps), hi_steps))
    cfg = _median(u.cfg_scale) if u else None
    cfg = float(min(max(cfg or rec.get("cfg_scale") or d["cfg_scale"], 1.0), 15.0))
    size = _size(_mode(u.sizes), eco) if u else None
    if size is None and rec.get("width") and rec.get("height"):
        size = _size(f"{rec['width']}x{rec['height']}", eco)
    size = size or d["size"]
    clip = int(_mode(u.clip_skip) or 1) if u else None
    clip = int(min(max(clip or rec.get("clip_skip") or d["clip_skip"], 1), 4))
    negative = (u.negative_prompt if u and u.negative_prompt else None) or rec.get("negative_prompt")
    if not negative:
        negative = PONY_NEGATIVE if checkpoint.family == Family.PONY else d["negative_prompt"]
    if eco in FLOW:
        sampler = sampler if sampler in flow_samplers(eco) else d["sampler"]
        clip = 1
        if eco == "flux":
            negative = ""  # guidance-distilled: no negative prompt (ApiCall refuses one)
    return {
        "sampler": sampler,
        "steps": steps,
        "cfg_scale": round(cfg, 1),
        "width": size[0],
        "height": size[1],
        "clip_skip": clip,
        "negative_prompt": negative,
        "source": src,
    }


def lora_weight(lora: VersionInfo, checkpoint_usage: UsageInfo | None, lora_usage: UsageInfo | None) -> float:
    used = (checkpoint_usage.loras or {}).get(str(lora.id)) if checkpoint_usage else None
    w = (used or {}).get("weight") or (lora_usage.lora_weight if lora_usage else None)
    w = w or (lora.recommended or {}).get("weight") or 0.8
    return round(float(min(max(w, 0.1), 1.5)), 2)


def compose_prompt(user_prompt: str, checkpoint: VersionInfo, loras: list[VersionInfo]) -> str:
    """User prompt (A1111 weighting kept) + the checkpoint's and LoRAs' trigger words not already in it."""
    prompt = user_prompt.strip()
    lowered = prompt.lower()
    extra = []
    for words in [checkpoint.trained_words[:3], *[lo.trained_words[:2] for lo in loras]]:
        for w in words:
            w = w.strip().strip(",")
            if w and w.lower() not in lowered and w.lower() not in (e.lower() for e in extra):
                extra.append(w)
    if not extra:
        return prompt
    if checkpoint.family == Family.PONY and checkpoint.trained_words:
        return ", ".join([*extra, prompt])
    return ", ".join([prompt, *extra])


def negative_embeddings(negative: str, embeddings: dict[str, VersionInfo], family: Family) -> list[EmbeddingRef]:
    """Textual-inversion embeddings the negative prompt names (EasyNegative, badhandv4, ...)."""
    out, seen = [], set()
    for token in re.findall(r"[\w\-.]+", negative):
        info = embeddings.get(token.lower())
        if info and info.id not in seen and compatible(family, info.family):
            seen.add(info.id)
            out.append(
                EmbeddingRef(
                    id=info.id, air=info.air, name=info.display_name, family=info.family, token=token, negative=True
                )
            )
    return out


def build_call(
    user_prompt: str,
    checkpoint: VersionInfo,
    usage: UsageInfo | None,
    loras: list[tuple[VersionInfo, float]],
    *,
    seed: int | None,
    embeddings: dict[str, VersionInfo] | None = None,
    rationale: str = "",
) -> ApiCall:
    params = rebuild_parameters(checkpoint, usage)
    params.pop("source")
    lora_infos = [lo for lo, _ in loras if compatible(checkpoint.family, lo.family)]
    return ApiCall(
        checkpoint=checkpoint.ref(),
        loras=[
            LoraRef(id=lo.id, air=lo.air, name=lo.display_name, family=lo.family, weight=w)
            for lo, w in loras
            if lo in lora_infos
        ],
        embeddings=negative_embeddings(params["negative_prompt"], embeddings or {}, checkpoint.family),
        prompt=compose_prompt(user_prompt, checkpoint, lora_infos),
        seed=seed if seed is not None else secrets.randbelow(MAX_SEED + 1),
        rationale=rationale,
        **params,
    )
