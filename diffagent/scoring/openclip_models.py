"""open_clip loading and image-text cosine, shared by CLIP score and HPS v2.

HPS v2 is an open_clip ViT-H-14 fine-tuned on human preferences: its checkpoint has the same keys
and shapes as open_clip's own ViT-H-14, so both metrics are "an open_clip model + a cosine" and
differ only in weights and in how the cosine is reported.
"""

from __future__ import annotations

import contextlib
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from diffagent.errors import NotFoundError, UserInputError
from diffagent.scoring._torchvision import ensure_torchvision


@dataclass(frozen=True)
class OpenClipModel:
    model: Any
    preprocess: Any
    tokenizer: Any
    device: str
    name: str


def _open_clip():
    ensure_torchvision()
    import open_clip

    return open_clip


def model_name(spec: str) -> str:
    """An open_clip model name; a path to a model-config JSON is registered under its file stem."""
    open_clip = _open_clip()
    if spec.endswith(".json"):
        path = Path(spec).expanduser()
        if not path.is_file():
            raise NotFoundError(f"open_clip model config {str(path)!r} does not exist")
        open_clip.add_model_config(path)
        return path.stem
    if spec not in open_clip.list_models():
        raise UserInputError(
            f"unknown open_clip model {spec!r}; use a name from open_clip.list_models() "
            "(e.g. ViT-L-14, ViT-H-14) or a path to a model-config JSON"
        )
    return spec


def pretrained_tags(name: str) -> list[str]:
    return list(_open_clip().list_pretrained_tags_by_model(name))


def load(
    spec: str,
    *,
    checkpoint: Path | None = None,
    pretrained_tag: str | None = None,
    device: str = "cpu",
    trust_pickles: bool = False,
) -> OpenClipModel:
    """Build ``spec`` and load weights from a local ``checkpoint`` (strictly) or an open_clip tag."""
    open_clip = _open_clip()
    name = model_name(spec)
    try:
        if pretrained_tag is not None:
            model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=pretrained_tag, device=device)
        else:
            model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=None)
            if checkpoint is not None:
                _load_checkpoint(open_clip, model, checkpoint, trust_pickles)
            model = model.to(device)
    except RuntimeError as e:
        if "download" in str(e).lower():
            raise NotFoundError(
                f"open_clip could not fetch {name}/{pretrained_tag}: {e}. Run once with network, "
                "or configure a local checkpoint file instead of a pretrained tag"
            ) from e
        raise
    model.eval()
    return OpenClipModel(
        model=model, preprocess=preprocess, tokenizer=open_clip.get_tokenizer(name), device=device, name=name
    )


def _load_checkpoint(open_clip, model, path: Path, trust_pickles: bool) -> None:
    try:
        # strict: a checkpoint for another architecture must fail here, not score garbage later
        open_clip.load_checkpoint(model, str(path), strict=True, weights_only=not trust_pickles)
    except pickle.UnpicklingError as e:
        raise UserInputError(
            f"{str(path)!r} pickles Python objects, which torch.load refuses by default; if you trust "
            "the file, enable trust_pickles in the scoring configuration"
        ) from e
    except RuntimeError as e:
        raise UserInputError(
            f"checkpoint {str(path)!r} does not fit the open_clip model: {str(e)[:500]}. "
            "Check that the model name matches the checkpoint (HPS v2 needs ViT-H-14)"
        ) from e


def autocast(device: str, half: bool):
    """fp16 autocast on CUDA when asked; nothing on CPU (fp16 matmuls are slow or missing there)."""
    if half and device.startswith("cuda"):
        import torch

        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def cosines(m: OpenClipModel, prompt: str, images: list[Image.Image], *, batch_size: int, half: bool) -> list[float]:
    """cos(image, prompt) for each image, with L2-normalized open_clip embeddings."""
    import torch

    out: list[float] = []
    with torch.inference_mode(), autocast(m.device, half):
        text = m.model.encode_text(m.tokenizer([prompt]).to(m.device), normalize=True).float()
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            x = torch.stack([m.preprocess(im.convert("RGB")) for im in chunk]).to(m.device)
            feats = m.model.encode_image(x, normalize=True).float()
            out.extend((feats @ text.T).squeeze(-1).tolist())
    return out
