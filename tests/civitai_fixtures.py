"""Synthetic Civitai ``/api/v1/models`` items in the real shape, written for tests (no shared data).

The set is small but complete: SD 1.5 and SDXL checkpoints with distinct styles, LoRAs for both
families with trigger words, embeddings, an NSFW model, and sample images whose ``Model hash``
links them to a checkpoint file (AutoV2 = first 10 hex digits of SHA256), as on Civitai.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path


def _sha(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest().upper()


def _file(fid: int, name: str, fmt: str = "SafeTensor") -> dict:
    sha = _sha(name)
    return {
        "id": fid,
        "name": name,
        "sizeKB": 2_000_000.0,
        "type": "Model",
        "primary": True,
        "metadata": {"fp": "fp16", "size": "pruned", "format": fmt},
        "hashes": {"AutoV2": sha[:10], "SHA256": sha, "CRC32": sha[:8], "BLAKE3": sha[::-1]},
        "downloadUrl": f"https://civitai.com/api/download/models/{fid}",
    }


def _image(
    iid: int,
    prompt: str,
    ckpt_file: str,
    *,
    sampler="DPM++ 2M Karras",
    steps=25,
    cfg=7,
    size="512x768",
    neg="lowres, bad anatomy, worst quality",
    clip=None,
    loras=(),
    nsfw="None",
) -> dict:
    meta = {
        "prompt": prompt,
        "negativePrompt": neg,
        "sampler": sampler,
        "steps": steps,
        "cfgScale": cfg,
        "Size": size,
        "seed": 1234 + iid,
        "Model hash": _sha(ckpt_file)[:10].lower(),
        "resources": [{"name": n, "type": "lora", "weight": w} for n, w in loras],
    }
    if clip:
        meta["Clip skip"] = clip
    w, h = (int(x) for x in size.split("x"))
    return {"id": iid, "nsfw": nsfw, "width": w, "height": h, "meta": meta}


def _model(
    mid,
    vid,
    name,
    mtype,
    base,
    *,
    tags,
    words=(),
    desc="",
    downloads=1000,
    nsfw=False,
    file=None,
    images=(),
    creator="tester",
) -> dict:
    fname = file or f"{name.lower().replace(' ', '_')}_v1.safetensors"
    return {
        "id": mid,
        "name": name,
        "description": f"<p>{desc}</p><p>Use it <b>well</b>.</p>",
        "type": mtype,
        "poi": False,
        "nsfw": nsfw,
        "allowNoCredit": True,
        "allowCommercialUse": "Rent",
        "allowDerivatives": True,
        "allowDifferentLicense": True,
        "stats": {
            "downloadCount": downloads,
            "favoriteCount": downloads // 10,
            "commentCount": 1,
            "ratingCount": 10,
            "rating": 4.8,
        },
        "creator": {"username": creator},
        "tags": list(tags),
        "modelVersions": [
            {
                "id": vid,
                "modelId": mid,
                "name": "v1.0",
                "createdAt": "2023-05-01T00:00:00.000Z",
                "trainedWords": list(words),
                "baseModel": base,
                "description": f"<p>{name} v1</p>",
                "stats": {"downloadCount": downloads, "ratingCount": 10, "rating": 4.8},
                "files": [_file(vid * 10, fname)],
                "images": list(images),
                "downloadUrl": f"https://civitai.com/api/download/models/{vid}",
            }
        ],
    }


PHOTO = "photonreal_v1.safetensors"
ANIME = "animeverse_v1.safetensors"
WATER = "aquarelle_v1.safetensors"
XLPHOTO = "xlrealism_v1.safetensors"
XLANIME = "xlanime_v1.safetensors"


def items() -> list[dict]:
    return [
        _model(
            101,
            1001,
            "PhotonReal",
            "Checkpoint",
            "SD 1.5",
            file=PHOTO,
            downloads=90_000,
            tags=["photorealistic", "portraits", "base model"],
            desc="Photorealistic portraits and street photography.",
            images=[
                _image(
                    9001,
                    "portrait photo of an old fisherman, 85mm, film grain, <lora:filmGrain_v1:0.6>",
                    PHOTO,
                    loras=[("filmGrain_v1", 0.6)],
                ),
                _image(9002, "street photography, rainy tokyo at night, neon reflections", PHOTO, steps=30),
                _image(9003, "photo of a woman in a cafe, soft window light, bokeh", PHOTO, sampler="Euler a"),
            ],
        ),
        _model(
            102,
            1002,
            "AnimeVerse",
            "Checkpoint",
            "SD 1.5",
            file=ANIME,
            downloads=60_000,
            tags=["anime", "illustration", "2d"],
            desc="Colorful anime illustrations and characters.",
            images=[
                _image(
                    9011,
                    "1girl, solo, school uniform, cherry blossoms, anime style",
                    ANIME,
                    clip=2,
                    cfg=8,
                    neg="EasyNegative, lowres",
                ),
                _image(
                    9012,
                    "1boy, samurai, dynamic pose, anime screencap",
                    ANIME,
                    clip=2,
                    cfg=8,
                    neg="EasyNegative, lowres",
                ),
            ],
        ),
        _model(
            103,
            1003,
            "Aquarelle",
            "Checkpoint",
            "SD 1.5",
            file=WATER,
            downloads=8_000,
            tags=["watercolor", "painting", "style"],
            desc="Soft watercolor paintings with paper texture.",
            images=[
                _image(9021, "watercolor painting of a fox in a misty forest, paper texture", WATER, steps=28),
                _image(9022, "watercolor landscape, lake and mountains, soft washes", WATER, steps=28),
            ],
        ),
        _model(
            104,
            1004,
            "XL Realism",
            "Checkpoint",
            "SDXL 1.0",
            file=XLPHOTO,
            downloads=70_000,
            tags=["photorealistic", "sdxl", "cinematic"],
            desc="SDXL photorealism, cinematic lighting.",
            images=[
                _image(
                    9031,
                    "cinematic photo of a lighthouse in a storm, dramatic light",
                    XLPHOTO,
                    size="1024x1024",
                    sampler="DPM++ 2M SDE Karras",
                    steps=35,
                    cfg=5,
                    loras=[("xlDetail_v1", 0.8)],
                ),
            ],
        ),
        _model(
            105,
            1005,
            "XL Anime",
            "Checkpoint",
            "Pony",
            file=XLANIME,
            downloads=50_000,
            tags=["anime", "pony", "cartoon"],
            words=["score_9", "score_8_up"],
            desc="Anime on Pony Diffusion.",
            images=[_image(9041, "score_9, 1girl, witch hat, magic forest", XLANIME, size="832x1216", clip=2)],
        ),
        _model(
            106,
            1006,
            "NSFW Mix",
            "Checkpoint",
            "SD 1.5",
            nsfw=True,
            downloads=120_000,
            tags=["nsfw", "photorealistic"],
            desc="Adult content merge.",
        ),
        _model(
            201,
            2001,
            "Film Grain",
            "LORA",
            "SD 1.5",
            file="filmGrain_v1.safetensors",
            downloads=20_000,
            tags=["photography", "style", "film"],
            words=["film grain"],
            desc="Adds analog film grain.",
        ),
        _model(
            202,
            2002,
            "Watercolor Style",
            "LORA",
            "SD 1.5",
            file="watercolorStyle_v1.safetensors",
            downloads=15_000,
            tags=["watercolor", "style"],
            words=["watercolor", "wtrclr"],
            desc="Watercolor painting style.",
        ),
        _model(
            203,
            2003,
            "XL Detail",
            "LORA",
            "SDXL 1.0",
            file="xlDetail_v1.safetensors",
            downloads=30_000,
            tags=["detail", "sdxl", "tool"],
            desc="More detail for SDXL.",
        ),
        _model(
            204,
            2004,
            "Pixel Art",
            "LoCon",
            "SD 1.5",
            file="pixelArt_v1.safetensors",
            downloads=12_000,
            tags=["pixel art", "style", "game"],
            words=["pixel art"],
            desc="Retro pixel art sprites.",
        ),
        _model(
            301,
            3001,
            "EasyNegative",
            "TextualInversion",
            "SD 1.5",
            file="EasyNegative.safetensors",
            downloads=100_000,
            tags=["negative", "embedding"],
            words=["EasyNegative"],
            desc="Negative embedding for better anatomy.",
        ),
    ]


def write_jsonl(path: Path, rows: list[dict] | None = None) -> Path:
    with open(path, "w", encoding="utf-8") as fh:
        for item in rows if rows is not None else items():
            fh.write(json.dumps(item) + "\n")
    return path
