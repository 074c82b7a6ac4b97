"""PNG output the way A1111 and Civitai write it: generation parameters in a ``parameters`` text chunk.

Civitai, A1111's "PNG Info" tab, ComfyUI importers and most image browsers read that chunk, so an image
made here can be dropped into them and re-created. The text format is A1111's::

    <prompt>
    Negative prompt: <negative prompt>
    Steps: 25, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 1, Size: 512x768, Model hash: 6ce0161689, ...

Values that contain ``,``, ``:`` or a newline are JSON-quoted (A1111's ``quote``).
"""

from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path

from pydantic import BaseModel, Field

from diffagent.atomic import write_atomic
from diffagent.errors import UserInputError

PREVIEW_MAX_SIDE = 512
PREVIEW_MAX_BYTES = 512 * 1024

# one "Key: value" pair of the settings line; a value is a JSON string or runs to the next comma
_PAIR = re.compile(r'\s*([\w][\w \-/+().]*?):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)')


def quote(value: str) -> str:
    value = str(value)
    if not any(c in value for c in ',:\n"'):
        return value
    return json.dumps(value, ensure_ascii=False)


def format_fields(fields: dict[str, object]) -> str:
    return ", ".join(f"{k}: {quote(v)}" for k, v in fields.items() if v is not None and v != "")


class GenerationParameters(BaseModel):
    """The parsed ``parameters`` chunk: prompts plus the settings line as strings, keys as A1111 writes them."""

    prompt: str
    negative_prompt: str = ""
    settings: dict[str, str] = Field(default_factory=dict)

    def _get(self, key: str, cast):
        v = self.settings.get(key)
        return cast(v) if v not in (None, "") else None

    @property
    def steps(self) -> int | None:
        return self._get("Steps", int)

    @property
    def sampler(self) -> str | None:
        return self.settings.get("Sampler")

    @property
    def cfg_scale(self) -> float | None:
        return self._get("CFG scale", float)

    @property
    def distilled_cfg_scale(self) -> float | None:
        """FLUX.1's distilled guidance, as Forge writes it beside ``CFG scale: 1``."""
        return self._get("Distilled CFG Scale", float)

    @property
    def shift(self) -> float | None:
        return self._get("Shift", float)

    @property
    def seed(self) -> int | None:
        return self._get("Seed", int)

    @property
    def size(self) -> tuple[int, int] | None:
        v = self.settings.get("Size")
        if not v or "x" not in v:
            return None
        w, h = v.lower().split("x", 1)
        return int(w), int(h)

    @property
    def clip_skip(self) -> int:
        return self._get("Clip skip", int) or 1

    @property
    def model(self) -> str | None:
        return self.settings.get("Model")


def parse_parameters_text(text: str) -> GenerationParameters:
    """Parse A1111 generation-parameters text (what ``parameters`` holds)."""
    lines = text.strip().split("\n")
    settings: dict[str, str] = {}
    if lines:
        pairs = _PAIR.findall(lines[-1])
        if len(pairs) >= 3:  # A1111's own test for "this last line is the settings line"
            lines = lines[:-1]
            for k, v in pairs:
                v = v.strip()
                if v.startswith('"') and v.endswith('"') and len(v) >= 2:
                    try:
                        v = json.loads(v)
                    except json.JSONDecodeError:
                        pass
                settings[k.strip()] = v
    prompt, negative, in_negative = [], [], False
    for line in lines:
        if line.startswith("Negative prompt:"):
            in_negative = True
            line = line[len("Negative prompt:") :].lstrip(" ")
        (negative if in_negative else prompt).append(line)
    return GenerationParameters(
        prompt="\n".join(prompt).strip(), negative_prompt="\n".join(negative).strip(), settings=settings
    )


def parse_png_parameters(source: Path | str | bytes) -> GenerationParameters:
    """Read and parse the ``parameters`` chunk of a PNG file (path) or PNG bytes."""
    from PIL import Image

    data = io.BytesIO(source) if isinstance(source, bytes | bytearray) else source
    with Image.open(data) as im:
        im.load()
        text = (getattr(im, "text", None) or {}).get("parameters") or im.info.get("parameters")
    if not text:
        raise UserInputError(
            "the image has no 'parameters' text chunk (not made by A1111/Civitai/diffagent, "
            "or the chunk was stripped by an image host)"
        )
    return parse_parameters_text(text)


def png_bytes(image, parameters: str | None = None, *, optimize: bool = False) -> bytes:
    from PIL.PngImagePlugin import PngInfo

    info = None
    if parameters is not None:
        info = PngInfo()
        info.add_text("parameters", parameters)  # tEXt, or iTXt when the text is not Latin-1
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=info, optimize=optimize)
    return buf.getvalue()


def write_png(image, directory: Path, name: str, parameters: str) -> Path:
    """Write the PNG atomically (temp file in the same folder, then rename) and return its path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / name
    data = png_bytes(image, parameters)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())  # a render is minutes of GPU time: on disk before it is reported done

    write_atomic(target, write)
    return target


def preview_png(
    image, parameters: str | None = None, *, max_side: int = PREVIEW_MAX_SIDE, max_bytes: int = PREVIEW_MAX_BYTES
) -> bytes:
    """A PNG small enough for a chat client: longest side <= ``max_side`` and at most ``max_bytes``."""
    from PIL import Image

    im = image.convert("RGB")
    scale = min(1.0, max_side / max(im.size))
    while True:
        size = (max(1, round(im.width * scale)), max(1, round(im.height * scale)))
        small = im if size == im.size else im.resize(size, Image.Resampling.LANCZOS)
        data = png_bytes(small, parameters, optimize=True)
        if len(data) <= max_bytes or max(size) <= 16:
            return data
        # noise-like images compress badly; shrink the area by about a third per try
        scale *= 0.8
