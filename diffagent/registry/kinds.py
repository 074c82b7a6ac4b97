"""What a model is *for*: a checkpoint's kinds (photo, anime, ...) and a LoRA's role and concepts.

Selection needs these to answer the question a user asks first: is this the right kind of model, and
did the tool add anything I did not ask for? (``docs/fit.md``). Curated models carry hand-written
labels (``default_models.toml``); models imported from Civitai get labels derived here from their
tags and names, which are noisy, so derived labels are conservative: an ambiguous checkpoint is
``unknown`` rather than ``photo``.

Checkpoint kinds:  photo, general, art, anime, cartoon, pixel, base; and ``refiner`` / ``inpainting``
for models that cannot render an image alone (never selected as a checkpoint).
LoRA roles:        style, subject (character, person, object, clothing, concept), detail, lighting, speed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

CHECKPOINT_KINDS = ("photo", "general", "art", "anime", "cartoon", "pixel", "base", "unknown")
#: kinds of checkpoint that cannot make an image on their own
NOT_STANDALONE = frozenset({"refiner", "inpainting"})
LORA_ROLES = ("style", "subject", "detail", "lighting", "speed")
#: LoRA roles that change no style or subject: allowed when asked for, never harmful
NEUTRAL_ROLES = frozenset({"detail", "lighting", "speed"})

_TOKEN = re.compile(r"[a-z0-9]+(?:[.'-][a-z0-9]+)*")
_VERSIONISH = re.compile(r"^(v?\d+(\.\d+)*[a-z]?|fp16|fp32|pruned|ema|safetensors)$")


@dataclass(frozen=True)
class ModelKinds:
    """``kinds``: a checkpoint's kinds (strongest first) or a LoRA's one role; ``concepts``: phrases a
    request contains when it asks for what the model does; ``origin``: curated | derived."""

    kinds: tuple[str, ...]
    concepts: tuple[str, ...] = ()
    origin: str = "derived"

    @property
    def standalone(self) -> bool:
        return not (set(self.kinds) & NOT_STANDALONE)

    @property
    def role(self) -> str | None:
        return self.kinds[0] if self.kinds and self.kinds[0] in LORA_ROLES else None


def validate(model_type: str, kinds: list[str], concepts: list[str]) -> None:
    """Raise ``ValueError`` with the fix when labels use words outside the vocabulary."""
    if model_type == "checkpoint":
        allowed = set(CHECKPOINT_KINDS) | NOT_STANDALONE
        bad = [k for k in kinds if k not in allowed]
        if bad or not kinds:
            raise ValueError(f"checkpoint kinds {kinds!r}: use one or more of {sorted(allowed)}")
    elif model_type in ("lora", "locon"):
        if len(kinds) != 1 or kinds[0] not in LORA_ROLES:
            raise ValueError(f"LoRA role {kinds!r}: give exactly one of {list(LORA_ROLES)}")
        if not concepts:
            raise ValueError("a LoRA needs at least one concept: a phrase a request would use to ask for it")
    if any(c != c.lower().strip() or not c for c in concepts):
        raise ValueError(f"concepts {concepts!r} must be non-empty lowercase phrases")


# --------------------------------------------------------------------------- derived labels
# Civitai tag (or name word) -> checkpoint kind. A name word counts twice: creators name what a model is.
_CK_TAGS: dict[str, str] = {
    **dict.fromkeys(
        [
            "anime",
            "manga",
            "2d",
            "hentai",
            "anime character",
            "anime girl",
            "waifu",
            "anime style",
            "2.5d",
            "semi-realistic",
            "semirealistic",
            "semi realistic",
            "vtuber",
        ],
        "anime",
    ),
    **dict.fromkeys(
        [
            "photorealistic",
            "realistic",
            "photography",
            "photorealism",
            "photo",
            "realism",
            "hyperrealism",
            "hyperrealistic",
            "raw photo",
        ],
        "photo",
    ),
    **dict.fromkeys(
        [
            "illustration",
            "art style",
            "artstyle",
            "digital art",
            "concept art",
            "paintings",
            "painting",
            "artistic",
            "fantasy art",
            "digital illustration",
            "watercolor",
            "oil painting",
            "ink",
            "painterly",
            "stylized",
            "midjourney",
            "sketch",
        ],
        "art",
    ),
    **dict.fromkeys(
        [
            "cartoon",
            "3d",
            "disney",
            "pixar",
            "toon",
            "furry",
            "comic",
            "comics",
            "comic book",
            "3d render",
            "render",
            "chibi",
        ],
        "cartoon",
    ),
    **dict.fromkeys(["pixel art", "pixelart", "pixel"], "pixel"),
    **dict.fromkeys(["general purpose", "general", "all-purpose", "versatile", "all purpose"], "general"),
}
_CK_NAME: dict[str, str] = {
    **dict.fromkeys(
        [
            "anime",
            "anything",
            "waifu",
            "manga",
            "hentai",
            "counterfeit",
            "pastel",
            "2.5d",
            "2d",
            "animix",
            "meina",
            "cetus",
            "kawaii",
        ],
        "anime",
    ),
    **dict.fromkeys(
        ["realistic", "real", "photo", "reality", "realism", "photoreal", "raw", "analog", "realisian"], "photo"
    ),
    **dict.fromkeys(["toon", "3d", "disney", "pixar", "cartoon", "furry"], "cartoon"),
    **dict.fromkeys(["pixel"], "pixel"),
    **dict.fromkeys(["art", "paint", "painting", "illustration", "journey"], "art"),
}
_SEMI = {"semi-realistic", "semirealistic", "semi realistic", "2.5d"}

_LORA_NAME: dict[str, str] = {
    **dict.fromkeys(["lcm", "lightning", "hyper", "turbo"], "speed"),
    **dict.fromkeys(["detail", "details", "detailer", "tweaker", "enhancer", "detailed"], "detail"),
    **dict.fromkeys(["noise", "noiseoffset", "offset", "contrast", "lowra", "lighting", "brightness"], "lighting"),
}
_LORA_STYLE_TAGS = {
    "style",
    "art style",
    "artstyle",
    "style lora",
    "artist",
    "styles",
    "painting",
    "illustration",
    "pixel art",
    "3d",
    "watercolor",
    "lineart",
    "line art",
}
_NAME_NOISE = {
    "lora",
    "locon",
    "lycoris",
    "loha",
    "v1",
    "v2",
    "v3",
    "v4",
    "v5",
    "sd",
    "sdxl",
    "xl",
    "sd15",
    "1.5",
    "version",
    "model",
    "by",
    "the",
    "of",
    "and",
    "for",
    "a",
    "an",
    "with",
    "style",
}


def _words(s: str) -> list[str]:
    return _TOKEN.findall(s.lower())


def name_phrase(model_name: str) -> str:
    """A model's name as a request would say it: lowercase words without "LoRA", versions or digits."""
    return " ".join(w for w in _words(model_name) if w not in _NAME_NOISE and not _VERSIONISH.match(w))


#: phrases of a model's description that say what it is for (each counts once)
_CK_DESC: dict[str, str] = {
    **dict.fromkeys(["anime", "manga", "2.5d", "semi-realistic", "semi realistic", "waifu"], "anime"),
    **dict.fromkeys(
        ["photorealistic", "photorealism", "realistic", "photography", "photographic", "real photo", "realism"], "photo"
    ),
    **dict.fromkeys(
        [
            "illustration",
            "painting",
            "painterly",
            "concept art",
            "digital art",
            "artistic",
            "watercolor",
            "oil painting",
        ],
        "art",
    ),
    **dict.fromkeys(["cartoon", "3d render", "disney", "pixar", "toon", "furry", "comic"], "cartoon"),
    **dict.fromkeys(["pixel art"], "pixel"),
    **dict.fromkeys(["general purpose", "all-purpose", "versatile", "all purpose", "general-purpose"], "general"),
}


def derive(
    model_type: str,
    model_name: str,
    version_name: str,
    tags: list[str],
    trained_words: list[str],
    description: str = "",
) -> ModelKinds:
    """Labels from what a Civitai page says about itself (tags, names, its description's first 600 characters,
    trigger words)."""
    name = f"{model_name} {version_name}".lower()
    tagset = {t.lower().strip() for t in tags if isinstance(t, str)}
    if model_type == "checkpoint":
        if "inpaint" in name:
            return ModelKinds(("inpainting",))
        if "refiner" in name:
            return ModelKinds(("refiner",))
        votes: dict[str, int] = {}
        for t in tagset:
            if t in _CK_TAGS:
                votes[_CK_TAGS[t]] = votes.get(_CK_TAGS[t], 0) + 1
        # the page's name, not the version's: versions of one model share its kinds (a version named "v5 photo"
        # says little), so a request's kind never reorders the versions of a page
        for w in set(_words(model_name)):
            if w in _CK_NAME:
                votes[_CK_NAME[w]] = votes.get(_CK_NAME[w], 0) + 2
        desc = " ".join(re.sub(r"<[^>]+>", " ", description[:600]).lower().split())
        for phrase, kind in _CK_DESC.items():
            if re.search(rf"(?<![\w-]){re.escape(phrase)}(?![\w-])", desc):
                votes[kind] = votes.get(kind, 0) + 1
        if any(p in desc for p in ("semi-realistic", "semi realistic", "2.5d")):
            tagset = tagset | {"2.5d"}
        if tagset & _SEMI:  # a 2.5D mix is an anime model (fit-judging.md), not a photo model unless named so
            votes["anime"] = votes.get("anime", 0) + 1
        if not votes:
            return ModelKinds(("unknown",))
        best = max(votes.values())
        kept = sorted((k for k, v in votes.items() if v * 2 >= best), key=lambda k: (-votes[k], k))
        if "photo" in kept and "anime" in kept:  # tagged both ways: the stronger side wins; a tie is a 2.5D mix
            loser = "anime" if votes["photo"] > votes["anime"] else "photo"
            kept = [k for k in kept if k != loser]
        if kept[0] == "anime":  # an anime model is not also a general or a painterly one, whatever else it is tagged
            kept = [k for k in kept if k in ("anime", "cartoon")]
        return ModelKinds(tuple(kept))
    if model_type in ("lora", "locon"):
        role = next((_LORA_NAME[w] for w in _words(name) if w in _LORA_NAME), None)
        if role is None:
            role = "style" if tagset & _LORA_STYLE_TAGS and not tagset & {"character", "celebrity"} else "subject"
        # its name is how a request names it; trigger words are evidence of their own (agent/retrieve.py)
        core = name_phrase(model_name)
        concepts = [core] if len(core) >= 3 else []
        return ModelKinds((role,), tuple(dict.fromkeys(concepts)))
    return ModelKinds(())
