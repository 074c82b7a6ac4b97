"""Style intent: which kinds of checkpoint fit a request, judged as an experienced Stable Diffusion user
would (the standard in ``docs/fit.md``).

A request's style cues ("a photo of", "watercolor", "anime", "3d render", "pixel art", an artist's name) each
grade the kinds of checkpoint 0 (wrong), 1 (acceptable) or 2 (good); several cues take the best grade per
kind. A request with no cue is a plain scene: photorealistic and strong general models are good, art models
acceptable, anime and cartoon models wrong.

``natural`` tells a natural-language request (what MCP clients send) from a creator's tag list
("masterpiece, best quality, 1girl, ..."): for tag lists the creators' own votes (kNN, ranker) know more
about the kind than the cue table, so selection weighs the kind fit less there.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from diffagent.registry.kinds import NOT_STANDALONE

GOOD, OK, WRONG = 2, 1, 0

#: (cue phrases, kinds graded good, kinds graded acceptable); phrases match on word boundaries
_CUES: list[tuple[tuple[str, ...], frozenset[str], frozenset[str]]] = [
    (
        (
            "photo",
            "photos",
            "photograph",
            "photographs",
            "photography",
            "photographic",
            "photorealistic",
            "photoreal",
            "realistic",
            "hyperrealistic",
            "hyper realistic",
            "hyper-realistic",
            "dslr",
            "35mm",
            "50mm",
            "85mm",
            "polaroid",
            "raw photo",
            "bokeh",
            "depth of field",
            "shot on",
            "canon eos",
            "nikon",
            "sony a7",
            "film grain",
            "portrait photo",
            "stock photo",
            "photoshoot",
            "photo shoot",
            "selfie",
            "documentary",
            "national geographic",
        ),
        frozenset({"photo", "general"}),
        frozenset(),
    ),
    (
        (
            "anime",
            "manga",
            "waifu",
            "visual novel",
            "1girl",
            "1boy",
            "2girls",
            "kawaii",
            "makoto shinkai",
            "studio ghibli",
            "ghibli",
            "kyoto animation",
            "cel shaded",
            "cel shading",
            "vtuber",
            "genshin",
            "pokemon",
            "shonen",
            "shoujo",
            "light novel",
            "hentai",
        ),
        frozenset({"anime"}),
        frozenset({"general", "cartoon", "art"}),
    ),
    (("chibi",), frozenset({"anime", "cartoon"}), frozenset({"general"})),
    (
        (
            "oil painting",
            "painting",
            "paintings",
            "painted",
            "watercolor",
            "watercolour",
            "gouache",
            "acrylic",
            "drawing",
            "drawings",
            "drawn",
            "sketch",
            "sketches",
            "illustration",
            "illustrations",
            "illustrated",
            "poster",
            "posters",
            "propaganda poster",
            "concept art",
            "digital art",
            "digital painting",
            "ink",
            "ink wash",
            "charcoal",
            "pencil drawing",
            "pencil sketch",
            "colored pencil",
            "crayon drawing",
            "pastel drawing",
            "fresco",
            "impressionist",
            "impressionism",
            "expressionism",
            "art nouveau",
            "art deco",
            "cubism",
            "cubist",
            "surrealism",
            "surrealist",
            "ukiyo-e",
            "woodcut",
            "etching",
            "engraving",
            "lithograph",
            "mural",
            "artstation",
            "trending on artstation",
            "greg rutkowski",
            "alphonse mucha",
            "mucha",
            "van gogh",
            "monet",
            "picasso",
            "rembrandt",
            "dali",
            "klimt",
            "hokusai",
            "da vinci",
            "in the style of",
            "style of",
            "art by",
            "by artgerm",
            "fantasy art",
            "storybook",
            "book cover",
            "tarot",
            "stained glass",
            "calligraphy",
        ),
        frozenset({"art", "general"}),
        frozenset(),
    ),
    (
        (
            "cartoon",
            "cartoons",
            "3d render",
            "3d rendering",
            "3d rendered",
            "octane",
            "octane render",
            "unreal engine",
            "blender",
            "cgi",
            "pixar",
            "disney",
            "dreamworks",
            "claymation",
            "clay render",
            "plasticine",
            "figurine",
            "low poly",
            "low-poly",
            "isometric",
            "vinyl toy",
            "funko",
            "emoji",
            "sticker",
            "vector art",
            "vector illustration",
            "flat design",
            "logo",
            "mascot",
            "clipart",
            "clip art",
            "3d model",
            "zbrush",
            "c4d",
        ),
        frozenset({"cartoon", "general"}),
        frozenset({"art"}),
    ),
    (
        ("comic", "comics", "comic book", "graphic novel", "cel animation", "animated", "animation"),
        frozenset({"cartoon", "art", "general"}),
        frozenset({"anime"}),
    ),
    (
        ("pixel art", "pixelart", "pixel", "pixelated", "8-bit", "8 bit", "16-bit", "16 bit", "sprite"),
        frozenset({"pixel", "general"}),
        frozenset({"art", "cartoon"}),
    ),
    (
        (
            "fantasy",
            "sci-fi",
            "scifi",
            "science fiction",
            "cyberpunk",
            "steampunk",
            "solarpunk",
            "dieselpunk",
            "surreal",
            "dreamlike",
            "magical",
            "mythical",
            "epic",
            "ethereal",
            "dystopian",
            "post-apocalyptic",
            "futuristic",
            "otherworldly",
            "eldritch",
            "lovecraftian",
            "whimsical",
            "psychedelic",
        ),
        frozenset({"general", "art"}),
        frozenset({"photo"}),
    ),
]
#: a request with no cue at all
_PLAIN = (frozenset({"photo", "general"}), frozenset({"art"}))
#: kinds that are never good but give a reasonable image for most requests
_ALWAYS_OK = frozenset({"base", "unknown"})

_TAG_LIST_MARKERS = (
    "masterpiece",
    "best quality",
    "high quality",
    "1girl",
    "1boy",
    "absurdres",
    "highres",
    "8k",
    "4k",
    "ultra detailed",
    "extremely detailed",
    "solo",
    "looking at viewer",
)
_WEIGHTED = re.compile(r"\([^()]*:\s*\d")
_WORD = re.compile(r"[a-z0-9]+(?:[-'][a-z0-9]+)*")


@dataclass(frozen=True)
class Intent:
    """Grades of each checkpoint kind for one request, and the cues that set them."""

    grades: dict[str, int]
    cues: tuple[str, ...] = ()
    natural: bool = True

    def grade(self, kinds: list[str] | tuple[str, ...]) -> int:
        """0/1/2 for a checkpoint with these kinds: the best of its kinds; 0 when it cannot render alone."""
        if set(kinds) & NOT_STANDALONE:
            return WRONG
        if not kinds:
            return OK
        return max(self.grades.get(k, OK if k in _ALWAYS_OK else WRONG) for k in kinds)

    def primary_fits(self, kinds: list[str] | tuple[str, ...]) -> bool:
        """The model's strongest kind is one the request calls good (a photo model for a photo request)."""
        return bool(kinds) and self.grades.get(kinds[0]) == GOOD


def _has(text: str, words: set[str], phrase: str) -> bool:
    if " " in phrase or "-" in phrase:
        return re.search(rf"(?<![\w-]){re.escape(phrase)}(?![\w-])", text) is not None
    return phrase in words


def is_tag_list(prompt: str) -> bool:
    """A creator's tag list rather than a sentence: comma-separated short segments, A1111 weights, or the
    quality boilerplate ("masterpiece, best quality") that nobody writes in a natural request."""
    low = prompt.lower()
    if _WEIGHTED.search(low) or any(m in low for m in _TAG_LIST_MARKERS[:7]):
        return True
    parts = [p for p in low.split(",") if p.strip()]
    return len(parts) >= 5 and sum(len(p.split()) for p in parts) / len(parts) <= 3.0


def style_intent(prompt: str) -> Intent:
    text = " ".join(prompt.lower().split())
    words = set(_WORD.findall(text))
    good: set[str] = set()
    ok: set[str] = set()
    cues: list[str] = []
    for phrases, g, o in _CUES:
        hit = next((p for p in phrases if _has(text, words, p)), None)
        if hit is not None:
            cues.append(hit)
            good |= g
            ok |= o
    if not cues:
        good, ok = set(_PLAIN[0]), set(_PLAIN[1])
    ok -= good
    grades = {k: GOOD for k in good} | {k: OK for k in ok}
    return Intent(grades=grades, cues=tuple(cues), natural=not is_tag_list(prompt))
