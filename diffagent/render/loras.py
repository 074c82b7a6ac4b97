"""LoRA stacks and textual-inversion embeddings on a cached pipeline, swapped without reloading it.

Each LoRA version is a named peft adapter (``v<version id>``); a render loads the adapters it lacks, deletes
the ones it no longer wants and sets the weights, so the checkpoint stays loaded between calls. Files are
checked before any weight loads: a LoRA trained on another base has cross-attention matrices of the wrong
width (768 for SD 1.x, 1024 for SD 2.x, 2048 for SDXL), which diffusers would only report as a shape error
halfway through patching the UNet.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from diffagent.errors import UserInputError
from diffagent.render.lora_layouts import lora_source
from diffagent.render.pipelines import CachedPipeline

#: cross-attention width -> the base it belongs to, for error messages
_BASE_BY_WIDTH = {768: "SD 1.x", 1024: "SD 2.x", 2048: "SDXL"}
_FORMATS = (
    "diffusers reads kohya/Civitai, ComfyUI, ai-toolkit and diffusers/PEFT LoRA layouts; LyCORIS LoHa/LoKr "
    "are not supported"
)
_DOWN_MARKERS = (".lora_down.weight", ".lora.down.weight", ".lora_A.weight", ".lora_A.default.weight")


def adapter_name(version_id: int) -> str:
    return f"v{version_id}"


def lora_context_width(path: Path) -> int | None:
    """Input width of the LoRA's cross-attention key projections (``attn2.to_k``), read from the header."""
    if Path(path).suffix != ".safetensors":
        return None
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        for key in f.keys():
            if "attn2" in key and ("to_k" in key or "to_v" in key) and key.endswith(_DOWN_MARKERS):
                shape = f.get_slice(key).get_shape()
                return int(shape[1]) if len(shape) >= 2 else None
    return None


def check_lora(path: Path, pipe, name: str) -> None:
    """Refuse a LoRA whose weights do not fit this UNet, before anything loads."""
    if getattr(pipe, "unet", None) is None:
        return  # FLUX.1 / SD 3 transformers: diffusers names the missing or misshapen module itself
    width = lora_context_width(path)
    expected = pipe.unet.config.cross_attention_dim
    if width is not None and width != expected:
        got = _BASE_BY_WIDTH.get(width, "another base model")
        want = _BASE_BY_WIDTH.get(expected, "a different base model")
        raise UserInputError(
            f"LoRA {name!r} was made for {got} (cross-attention width {width}), but the checkpoint "
            f"is {want} (width {expected}); "
            "remove it or choose a LoRA made for the checkpoint's base model"
        )


@contextmanager
def quiet_load_report() -> Iterator[None]:
    """transformers prints a "load report" when a second adapter loads into a text encoder, listing the first
    adapter's weights as MISSING and "newly initialized"; they are neither (each adapter's weights stay those of its
    file, ``tests/render/test_loras.py``), so the report is hidden while a LoRA loads."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def _adapter_loaded(pipe, key: str) -> bool:
    """The adapter ``key`` sits on some component of ``pipe`` (UNet / transformer or a text encoder)."""
    return any(key in names for names in pipe.get_list_adapters().values())


def apply_loras(entry: CachedPipeline, loras: list[tuple[int, str, Path, float]]) -> None:
    """Make exactly ``loras`` ((version id, name, file, weight), ...) active on the cached pipeline."""
    pipe = entry.pipe
    wanted: dict[str, tuple[str, Path, float]] = {}
    for version_id, name, path, weight in loras:
        key = adapter_name(version_id)
        prev = wanted.get(key)
        # the same LoRA twice adds up, as two <lora:...> tags do in A1111
        wanted[key] = (name, path, weight + (prev[2] if prev else 0.0))
    for key, (name, path, _) in wanted.items():
        if key not in entry.loras:
            check_lora(path, pipe, name)
    if not wanted:
        if entry.loras:
            pipe.unload_lora_weights()  # removes the peft layers: the UNet is the checkpoint's again
            entry.loras.clear()
        return
    stale = [k for k in entry.loras if k not in wanted]
    if stale:
        pipe.delete_adapters(stale)
        for k in stale:
            del entry.loras[k]
    for key, (name, path, _) in wanted.items():
        if key in entry.loras:
            continue
        try:
            with quiet_load_report():
                pipe.load_lora_weights(lora_source(path, pipe), adapter_name=key)
        except (ValueError, RuntimeError, KeyError) as e:
            # half-loaded adapters would stay attached to the cached pipeline; take them off again
            if _adapter_loaded(pipe, key):
                pipe.delete_adapters([key])
            raise UserInputError(f"LoRA {name!r} ({Path(path).name}) could not be loaded: {e}. {_FORMATS}") from e
        if not _adapter_loaded(pipe, key):
            # diffusers only warns when no tensor name matches a module: the render would silently lack the LoRA
            raise UserInputError(
                f"LoRA {name!r} ({Path(path).name}) matched no layer of the checkpoint: its tensor "
                f"names are of another model family or an unknown layout. {_FORMATS}"
            )
        entry.loras[key] = Path(path)
    pipe.set_adapters(list(wanted), adapter_weights=[w for _, _, w in wanted.values()])


def _read_embedding(path: Path) -> dict:
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    import torch

    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means the same thing to the user
        raise UserInputError(
            f"embedding {path.name} is a pickle with non-tensor objects, which diffagent does "
            "not unpickle (unsafe); use its .safetensors version"
        ) from e


def _pairs(pipe) -> list[tuple[object, object]]:
    pairs = [(pipe.tokenizer, pipe.text_encoder)]
    if getattr(pipe, "text_encoder_2", None) is not None:
        pairs.append((pipe.tokenizer_2, pipe.text_encoder_2))
    return pairs


def apply_embeddings(entry: CachedPipeline, embeddings: list[tuple[str, str, Path]]) -> None:
    """Make exactly ``embeddings`` ((token, name, file), ...) loaded; others are unloaded."""
    pipe = entry.pipe
    wanted = {token: (name, Path(path)) for token, name, path in embeddings}
    if {t: p for t, (_, p) in wanted.items()} == entry.embeddings:
        return
    if entry.embeddings:
        tokens = list(entry.embeddings)
        for tok, enc in _pairs(pipe):
            for t in tokens:
                # multi-vector embeddings were added as "t", "t_1", "t_2", ...
                added = [
                    a for a in tok.get_added_vocab() if a == t or (a.startswith(t + "_") and a[len(t) + 1 :].isdigit())
                ]
                if added:
                    pipe.unload_textual_inversion(added, tokenizer=tok, text_encoder=enc)
        entry.embeddings.clear()
    for token, (name, path) in wanted.items():
        state = _read_embedding(path)
        if getattr(pipe, "text_encoder_2", None) is not None:
            if not {"clip_l", "clip_g"} <= set(state):
                raise UserInputError(
                    f"embedding {name!r} has no clip_l/clip_g vectors, so it is not an SDXL "
                    "embedding; use one made for the checkpoint's base model"
                )
            parts = [
                (state["clip_l"], pipe.tokenizer, pipe.text_encoder),
                (state["clip_g"], pipe.tokenizer_2, pipe.text_encoder_2),
            ]
        else:
            if "clip_l" in state or "clip_g" in state:
                raise UserInputError(
                    f"embedding {name!r} is an SDXL embedding (clip_l/clip_g) and cannot load into an SD 1.x checkpoint"
                )
            parts = [(state, pipe.tokenizer, pipe.text_encoder)]
        for vectors, tok, enc in parts:
            width = enc.get_input_embeddings().weight.shape[-1]
            tensor = vectors if not isinstance(vectors, dict) else _embedding_tensor(vectors, name)
            if tensor.shape[-1] != width:
                raise UserInputError(
                    f"embedding {name!r} has {tensor.shape[-1]}-wide vectors but the text encoder "
                    f"expects {width}; it was made for another base model"
                )
            pipe.load_textual_inversion(
                tensor if tensor.ndim == 2 else tensor[None], token=token, tokenizer=tok, text_encoder=enc
            )
        entry.embeddings[token] = path


def _embedding_tensor(state: dict, name: str):
    """The vectors of an A1111 (``string_to_param``), diffusers (``<token>``) or Civitai (``emb_params``) file."""
    if "string_to_param" in state:
        return next(iter(state["string_to_param"].values()))
    if "emb_params" in state:
        return state["emb_params"]
    tensors = [v for v in state.values() if hasattr(v, "shape")]
    if len(tensors) == 1:
        return tensors[0]
    raise UserInputError(f"cannot find the vectors in embedding {name!r} (keys: {sorted(state)[:5]})")
