"""``bench build``: Civitai sample-image rows -> instruction-to-API pairs (a DABench-style set).

Instruction = the creator's prompt with A1111 resource tags stripped. Target = the checkpoint the
image was made with (resolved by hash), LoRAs with weights, sampler, steps, CFG, size, clip skip and
negative prompt. Splits are by model page (``diffagent.bench.split``), never by image.
"""

from __future__ import annotations

import gzip
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from pydantic import BaseModel, Field

from diffagent.atomic import write_atomic
from diffagent.bench.split import split_of
from diffagent.errors import UserInputError
from diffagent.prompttext import strip_resource_tags
from diffagent.registry.civitai import parse_float, parse_int
from diffagent.samplers import canonical_sampler


class TargetLora(BaseModel):
    name: str
    weight: float = 1.0


class Target(BaseModel):
    checkpoint_version_id: int
    checkpoint_model_id: int
    checkpoint_name: str = ""
    base_model: str = ""
    loras: list[TargetLora] = Field(default_factory=list)
    sampler: str | None = None
    steps: int | None = None
    cfg_scale: float | None = None
    width: int | None = None
    height: int | None = None
    clip_skip: int | None = None
    negative_prompt: str = ""


class Pair(BaseModel):
    image_id: int
    page_model_id: int
    #: the model version whose page shows the image, and its Civitai type ("LORA", "Checkpoint", ...): a LoRA's
    #: sample images are made with it, whether or not their metadata names it (``creator_loras``)
    page_version_id: int | None = None
    page_type: str = ""
    split: str
    instruction: str
    target: Target


def creator_loras(pair: Pair, by_stem: dict[str, int], lora_ids: frozenset[int] = frozenset()) -> set[int]:
    """The registry LoRA versions the creator used: those the image's metadata names (by file stem,
    ``stats.lora_name_index``) and, with ``lora_ids`` (the registry's LoRA versions), the LoRA whose own page shows the
    image (its metadata often does not name it; pairs built before the page's version was recorded lack it)."""
    used = {by_stem[lo.name.lower()] for lo in pair.target.loras if lo.name.lower() in by_stem}
    if pair.page_version_id is not None and pair.page_version_id in lora_ids:
        used.add(pair.page_version_id)
    return used


def _size(row: dict) -> tuple[int | None, int | None]:
    size = row.get("size")
    if isinstance(size, str) and "x" in size:
        w, _, h = size.partition("x")
        try:
            return int(w), int(h)
        except ValueError:
            pass
    return row.get("width"), row.get("height")


def row_to_pair(row: dict, *, sfw_only: bool = True) -> Pair | None:
    """A raw ``image_meta`` row -> ``Pair``; None when it has no usable target or prompt."""
    ck = row.get("resolved_checkpoint")
    if not ck or not isinstance(row.get("prompt"), str):
        return None
    if sfw_only and str(row.get("image_nsfw") or "None") != "None":
        return None
    instruction = strip_resource_tags(row["prompt"])
    if len(instruction) < 3:
        return None
    w, h = _size(row)
    loras = [
        TargetLora(
            name=str(r.get("name")), weight=float(r["weight"]) if isinstance(r.get("weight"), int | float) else 1.0
        )
        for r in row.get("resources") or []
        if str(r.get("type", "")).lower() in ("lora", "lycoris", "locon") and r.get("name")
    ]
    return Pair(
        image_id=int(row["image_id"]),
        page_model_id=int(row["attached_model_id"]),
        page_version_id=parse_int(row.get("attached_version_id")),
        page_type=str(row.get("attached_type") or ""),
        split=split_of(int(row["attached_model_id"])),
        instruction=instruction[:2000],
        target=Target(
            checkpoint_version_id=int(ck["version_id"]),
            checkpoint_model_id=int(ck["model_id"]),
            checkpoint_name=f"{ck.get('model_name', '')} {ck.get('version_name', '')}".strip(),
            base_model=str(ck.get("baseModel") or ""),
            loras=loras,
            sampler=canonical_sampler(row.get("sampler")),
            steps=parse_int(row.get("steps")),
            cfg_scale=parse_float(row.get("cfgScale")),
            width=parse_int(w),
            height=parse_int(h),
            clip_skip=parse_int(row.get("clip_skip")),
            negative_prompt=str(row.get("negativePrompt") or "")[:2000],
        ),
    )


def _open(path: Path):
    with open(path, "rb") as fh:
        gz = fh.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rt", encoding="utf-8") if gz else open(path, encoding="utf-8")


def load_pairs(path: Path, *, splits: set[str] | None = None, sfw_only: bool = True) -> Iterator[Pair]:
    """Read built pairs or raw ``image_meta`` rows (detected per line) from .jsonl or .jsonl.gz."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"{path} not found; build pairs with `diffagent bench build ROWS.jsonl.gz`")
    with _open(path) as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserInputError(f"{path}:{n}: invalid JSON ({e.msg})") from None
            pair = Pair.model_validate(row) if "instruction" in row else row_to_pair(row, sfw_only=sfw_only)
            if pair is not None and (splits is None or pair.split in splits):
                yield pair


def train_checkpoint_pages(path: Path) -> set[int]:
    """The checkpoint model pages that some train-split pair of ``path`` used: a pair whose checkpoint page is not
    among them is one that no train image shows (``bench select``'s no-train-image subset)."""
    return {p.target.checkpoint_model_id for p in load_pairs(path, splits={"train"})}


def build_pairs(rows: Path, out: Path, *, sfw_only: bool = True) -> Counter:
    """Write pairs for every usable row to ``out`` (.jsonl or .jsonl.gz) atomically; count per split."""
    counts: Counter = Counter()
    out = Path(out)

    def write(tmp: Path) -> None:
        opener = gzip.open if out.name.endswith(".gz") else open
        with opener(tmp, "wt", encoding="utf-8") as fh:
            for pair in load_pairs(rows, sfw_only=sfw_only):
                fh.write(pair.model_dump_json() + "\n")
                counts[pair.split] += 1

    write_atomic(out, write)
    return counts
