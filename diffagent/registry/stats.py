"""Usage statistics learned from creators' sample images.

For each checkpoint version: the distributions of sampler, steps, CFG, size and clip skip its
images were made with, a typical negative prompt, and the LoRAs used with it (and their weights).
For each LoRA version: how strongly it was applied. The selector rebuilds parameters from these.
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from pathlib import PurePath

from sqlalchemy import Connection, text

_TOKEN = re.compile(r"[a-z0-9_]+")
_ALNUM = re.compile(r"[A-Za-z0-9]+")


def resolve_images(conn: Connection) -> None:
    """Point each sample image at the checkpoint version whose file's AutoV2 hash it names."""
    conn.execute(
        text(
            "UPDATE sample_image SET version_id = ("
            " SELECT f.version_id FROM model_file f"
            " JOIN model_version v ON v.id = f.version_id JOIN model m ON m.id = v.model_id"
            " WHERE f.autov2 = sample_image.model_hash AND m.type = 'checkpoint'"
            ' ORDER BY f."primary" DESC, f.id LIMIT 1)'
            " WHERE model_hash IS NOT NULL"
        )
    )


def civitai_file_stem(model_name: str, version_name: str) -> str:
    """The file stem Civitai gives a download ("Widowmaker (Overwatch)" v1.5 -> "widowmakeroverwatch_v15"): the
    model and version names' letters and digits, joined by an underscore (camel case, compared lowercased).
    Creators who rename nothing write this stem in ``<lora:...>``, not the uploader's file name."""

    def squash(s: str) -> str:
        return "".join(_ALNUM.findall(s or "")).lower()

    return f"{squash(model_name)}_{squash(version_name)}"


def lora_name_index(conn: Connection) -> dict[str, int]:
    """The names A1111 writes in ``<lora:name:w>`` -> LoRA version id: each file's stem, then the stem Civitai gives
    its downloads (``civitai_file_stem``; it resolves 79 more of 1,523 creators' LoRA names in 3,000 val images).
    Where several versions share a name, the most downloaded wins; a file's own stem wins over a download name."""
    rows = conn.execute(
        text(
            "SELECT f.name, f.version_id, m.name, v.name FROM model_file f"
            " JOIN model_version v ON v.id = f.version_id"
            " JOIN model m ON m.id = v.model_id WHERE m.type IN ('lora', 'locon')"
            " ORDER BY v.downloads DESC"
        )
    ).all()
    index: dict[str, int] = {}
    for name, vid, _, _ in rows:
        index.setdefault(PurePath(name).stem.lower(), vid)
    for _, vid, model_name, version_name in rows:
        index.setdefault(civitai_file_stem(model_name, version_name), vid)
    return index


def lora_versions(conn: Connection) -> frozenset[int]:
    """Ids of every LoRA / LoCon version in the registry."""
    return frozenset(
        r[0]
        for r in conn.execute(
            text("SELECT v.id FROM model_version v JOIN model m ON m.id = v.model_id WHERE m.type IN ('lora', 'locon')")
        )
    )


def loras_used(resources: str | None, by_stem: dict[str, int]) -> set[int]:
    """The registry LoRA versions a sample image's resources JSON names (by file stem, ``lora_name_index``).

    An image shown on a LoRA's own page was made with that LoRA even where its metadata does not say so, which
    ``bench.pairs.creator_loras`` counts when scoring; counting it here too (in the LoRA kNN votes, trigger use and
    use with the checkpoint) measured worse on val (LoRA precision 0.636 -> 0.606 at recall 0.345 -> 0.343)."""
    used = {
        by_stem.get(str(x.get("name", "")).lower())
        for x in json.loads(resources or "[]")
        if str(x.get("type", "")).lower() in ("lora", "lycoris", "locon")
    }
    used.discard(None)
    return used


def _typical(texts: list[str]) -> str:
    """The most common text; among singletons, the one whose words are most common overall."""
    texts = [t.strip() for t in texts if t and t.strip()]
    if not texts:
        return ""
    counts = Counter(texts)
    best, n = counts.most_common(1)[0]
    if n > 1:
        return best
    df = Counter(tok for t in set(texts) for tok in set(_TOKEN.findall(t.lower())))

    def typicality(t: str) -> float:
        toks = _TOKEN.findall(t.lower())
        return sum(df[x] for x in toks) / (len(toks) + 5)

    return max(texts, key=typicality)[:1000]


def recompute_usage_stats(conn: Connection) -> int:
    """Rebuild ``usage_stats`` from ``sample_image``; returns the number of versions with stats."""
    loras = lora_name_index(conn)
    per_ckpt: dict[int, dict] = defaultdict(
        lambda: {
            "n": 0,
            "samplers": Counter(),
            "steps": Counter(),
            "cfg": Counter(),
            "sizes": Counter(),
            "clip": Counter(),
            "neg": [],
            "loras": defaultdict(list),
        }
    )
    lora_weights: dict[int, list[float]] = defaultdict(list)
    rows = conn.execute(
        text(
            "SELECT version_id, sampler, steps, cfg_scale, width, height, clip_skip, negative_prompt, resources"
            " FROM sample_image WHERE version_id IS NOT NULL"
        )
    )
    for vid, sampler, steps, cfg, w, h, clip, neg, resources in rows:
        s = per_ckpt[vid]
        s["n"] += 1
        if sampler:
            s["samplers"][sampler] += 1
        if steps:
            s["steps"][str(steps)] += 1
        if cfg:
            s["cfg"][f"{cfg:g}"] += 1
        if w and h:
            s["sizes"][f"{w}x{h}"] += 1
        s["clip"][str(clip or 1)] += 1
        if neg:
            s["neg"].append(neg)
        for r in json.loads(resources or "[]"):
            if str(r.get("type", "")).lower() not in ("lora", "lycoris", "locon"):
                continue
            lvid = loras.get(str(r.get("name", "")).lower())
            if lvid is None:
                continue
            weight = r.get("weight")
            weight = float(weight) if isinstance(weight, int | float) else 1.0
            s["loras"][lvid].append(weight)
            lora_weights[lvid].append(weight)

    conn.execute(text("DELETE FROM usage_stats"))
    out = []
    for vid, s in per_ckpt.items():
        out.append(
            {
                "version_id": vid,
                "n_images": s["n"],
                "samplers": json.dumps(dict(s["samplers"])),
                "steps": json.dumps(dict(s["steps"])),
                "cfg_scale": json.dumps(dict(s["cfg"])),
                "sizes": json.dumps(dict(s["sizes"])),
                "clip_skip": json.dumps(dict(s["clip"])),
                "negative_prompt": _typical(s["neg"]),
                "loras": json.dumps(
                    {str(k): {"count": len(v), "weight": round(sum(v) / len(v), 3)} for k, v in s["loras"].items()},
                    sort_keys=True,
                ),
                "lora_weight": None,
            }
        )
    for lvid, weights in lora_weights.items():
        mean = round(sum(weights) / len(weights), 3)
        if lvid in per_ckpt:
            continue
        out.append(
            {
                "version_id": lvid,
                "n_images": len(weights),
                "samplers": "{}",
                "steps": "{}",
                "cfg_scale": "{}",
                "sizes": "{}",
                "clip_skip": "{}",
                "negative_prompt": "",
                "loras": "{}",
                "lora_weight": mean,
            }
        )
    if out:
        cols = list(out[0])
        conn.execute(
            text(f"INSERT INTO usage_stats ({', '.join(cols)}) VALUES ({', '.join(':' + c for c in cols)})"), out
        )
    return len(out)
