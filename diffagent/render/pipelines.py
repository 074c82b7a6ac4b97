"""Load SD 1.5 / SDXL pipelines (diffusers folders and Civitai single files) and FLUX.1 / SD 3 pipelines
(diffusers folders, or a transformer file with its reference folder: ``flow_files.py``), and keep an LRU cache of
them.

Single files load against a config skeleton (``skeletons.py``) so no hub lookup happens. Before a single
``.safetensors`` loads, its key layout is checked against the family the registry claims, because a mislabeled
file otherwise fails deep inside the converter with an unreadable shape error.
"""

from __future__ import annotations

import gc
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diffagent.errors import UserInputError
from diffagent.families import FLOW, flow_family_of_keys

SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")

#: key prefixes that identify a single-file checkpoint's architecture (A1111/SGM layouts)
_ARCH_MARKERS = [
    ("sdxl-refiner", "conditioner.embedders.0.model.transformer."),
    ("sdxl", "conditioner.embedders.1.model."),
    ("sd2", "cond_stage_model.model."),
    ("sd1", "cond_stage_model.transformer."),
]


def detect_architecture(path: Path) -> str | None:
    """'sd1' | 'sd2' | 'sdxl' | 'sdxl-refiner' | 'flux' | 'sd3' from a ``.safetensors`` header (no tensors read);
    None if unknown."""
    if Path(path).suffix != ".safetensors":
        return None  # pickles must be unpickled to list their keys; the loader will tell
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        keys = list(f.keys())
    if flow := flow_family_of_keys(keys):
        return flow
    for arch, prefix in _ARCH_MARKERS:
        if any(k.startswith(prefix) for k in keys):
            return arch
    if any(k.startswith("model.diffusion_model.") for k in keys):
        return "unet-only"
    return None


def pipeline_class(ecosystem: str):
    import diffusers

    names = {
        "sd1": "StableDiffusionPipeline",
        "sdxl": "StableDiffusionXLPipeline",
        "flux": "FluxPipeline",
        "sd3": "StableDiffusion3Pipeline",
    }
    if ecosystem not in names:
        raise UserInputError(
            f"diffagent renders SD 1.x, SDXL, FLUX.1 and SD 3 checkpoints, not {ecosystem!r}; "
            "pick a checkpoint with base sd15 or sdxl"
        )
    return getattr(diffusers, names[ecosystem])


def dtype_kwarg() -> str:
    """diffusers 0.42 renamed ``torch_dtype`` to ``dtype`` (the old name warns); older versions know only the old."""
    import diffusers
    from packaging.version import Version

    return "dtype" if Version(diffusers.__version__).release >= (0, 42) else "torch_dtype"


def refuse_unsafe_pickle(path: Path, error: BaseException, what: str) -> None:
    """Raise the user's error when a pickle file failed to load because weights-only unpickling met non-tensor
    objects (diffagent never unpickles those: unsafe); return otherwise. diffusers wraps torch's ``UnpicklingError``
    in an ``OSError`` ("Unable to load weights"), so the whole chain of causes is read."""
    import pickle

    if path.suffix == ".safetensors":
        return
    cause: BaseException | None = error
    visited: set[int] = set()
    while cause is not None and id(cause) not in visited:
        if isinstance(cause, pickle.UnpicklingError) or "weights_only" in str(cause):
            raise UserInputError(
                f"{path.name} is a pickle {what} holding non-tensor objects, which diffagent does "
                "not unpickle (unsafe); use its .safetensors version"
            ) from error
        visited.add(id(cause))
        cause = cause.__cause__ or cause.__context__


#: CUDA memory beyond the weights that a render needs (activations, the VAE decode, the allocator's slack)
OFFLOAD_HEADROOM = 1.25


def component_nbytes(path: Path, reference: Path | None = None) -> dict[str, int]:
    """On-disk weight bytes per pipeline component: a diffusers folder's subfolders (``transformer``,
    ``text_encoder_2``, ...); a transformer file counts as the ``transformer`` of its ``reference`` folder; any other
    single file is one ``checkpoint``."""
    path = Path(path)
    if path.is_file():
        if reference is None:
            return {"checkpoint": path.stat().st_size}
        return {**component_nbytes(reference), "transformer": path.stat().st_size}
    sizes: dict[str, int] = {}
    for f in path.rglob("*"):
        if f.suffix in SINGLE_FILE_SUFFIXES and f.is_file():
            part = f.relative_to(path).parts[0] if len(f.relative_to(path).parts) > 1 else "checkpoint"
            sizes[part] = sizes.get(part, 0) + f.stat().st_size
    return sizes


def choose_offload(mode: str, device: str, components: dict[str, int], free_bytes: int | None) -> str:
    """'none', 'model' or 'sequential' (``Settings.offload``) for a pipeline of ``components`` bytes on ``device``.

    Offloading parks weights in CPU RAM while the GPU computes, so it means something on CUDA only. ``auto`` keeps
    everything on the GPU when the whole pipeline fits the free memory with headroom, else moves one component at a
    time (model offload: the largest one, the transformer or UNet, must fit), else streams layers (sequential)."""
    if mode not in ("auto", "none", "model", "sequential"):
        raise UserInputError(f"unknown offload mode {mode!r}; use auto, none, model or sequential")
    if not device.startswith("cuda"):
        return "none"
    if mode != "auto":
        return mode
    if free_bytes is None or not components:
        return "none"
    if sum(components.values()) * OFFLOAD_HEADROOM <= free_bytes:
        return "none"
    if max(components.values()) * OFFLOAD_HEADROOM <= free_bytes:
        return "model"
    return "sequential"


def cuda_free_bytes(device: str) -> int | None:
    """Free memory of the CUDA device, None elsewhere."""
    import torch

    if not device.startswith("cuda") or not torch.cuda.is_available():
        return None
    free, _total = torch.cuda.mem_get_info(torch.device(device))
    return int(free)


def place_pipeline(pipe, device: str, offload: str = "none"):
    """Move ``pipe`` to ``device``, or install diffusers' CPU-offload hooks (``choose_offload``'s answer)."""
    import torch

    if offload == "model":
        pipe.enable_model_cpu_offload(device=torch.device(device))
    elif offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=torch.device(device))
    elif offload == "none":
        pipe = pipe.to(device)
    else:
        raise UserInputError(f"unknown offload mode {offload!r}; use none, model or sequential")
    return pipe


def load_pipeline(
    path: Path,
    ecosystem: str,
    *,
    device: str,
    dtype,
    skeleton: Path | None,
    reference: Path | None = None,
    offload: str = "none",
):
    """A ready pipeline on ``device``: a diffusers folder, a single file loaded against ``skeleton``, or a FLUX.1
    transformer file completed by its ``reference`` model's folder (``flow_files.py``); ``offload``:
    ``place_pipeline``."""
    cls = pipeline_class(ecosystem)
    path = Path(path)
    extra: dict[str, Any] = {"safety_checker": None, "requires_safety_checker": False} if ecosystem == "sd1" else {}
    extra[dtype_kwarg()] = dtype
    if path.is_dir():
        if not (path / "model_index.json").exists():
            raise UserInputError(
                f"{path} is a folder without model_index.json; give a diffusers pipeline folder "
                "or a single .safetensors checkpoint"
            )
        pipe = cls.from_pretrained(path, local_files_only=True, **extra)
    elif path.suffix.lower() == ".safetensors" and ecosystem in FLOW and reference is not None:
        from diffagent.render.flow_files import load_flux_transformer, load_sd3_transformer

        load = load_flux_transformer if ecosystem == "flux" else load_sd3_transformer
        pipe = cls.from_pretrained(reference, transformer=load(path, reference, dtype), local_files_only=True, **extra)
    elif path.suffix.lower() in SINGLE_FILE_SUFFIXES and ecosystem in FLOW:
        raise UserInputError(
            f"{path.name}: a FLUX.1 / SD 3 single file loads as a .safetensors transformer completed "
            "by its reference model's folder, which was not given; use the model in diffusers format "
            "(a folder with model_index.json, as its Hugging Face repository has it)"
        )
    elif path.suffix.lower() in SINGLE_FILE_SUFFIXES:
        arch = detect_architecture(path)
        if arch is not None and arch != ecosystem:
            raise UserInputError(
                f"{path.name} is a {arch} checkpoint by its weights, but the registry lists it as "
                f"{ecosystem}; fix the model's base model in the registry or pick another file"
            )
        if skeleton is None:
            raise UserInputError(f"no config skeleton for {ecosystem}; single files need one to load offline")
        try:
            pipe = cls.from_single_file(str(path), config=str(skeleton), local_files_only=True, **extra)
        except Exception as e:
            refuse_unsafe_pickle(path, e, "checkpoint")
            raise
    else:
        raise UserInputError(
            f"cannot load {path}: expected a diffusers folder or a {', '.join(SINGLE_FILE_SUFFIXES)} file"
        )
    pipe.set_progress_bar_config(disable=True)
    return place_pipeline(pipe, device, offload)


def pipeline_nbytes(pipe) -> int:
    """Parameter + buffer bytes of all torch components (what the pipeline costs in RAM/VRAM)."""
    import torch

    total = 0
    for comp in pipe.components.values():
        if isinstance(comp, torch.nn.Module):
            total += sum(t.numel() * t.element_size() for t in comp.parameters())
            total += sum(t.numel() * t.element_size() for t in comp.buffers())
    return total


@dataclass
class CachedPipeline:
    """A loaded pipeline and the state the renderer layered on it (LoRAs, embeddings)."""

    key: tuple
    pipe: Any
    ecosystem: str
    nbytes: int
    base_scheduler_config: dict
    load_seconds: float
    #: the CPU offload the pipeline was placed with (``choose_offload``)
    offload: str = "none"
    #: adapter name -> LoRA file currently loaded into the pipeline
    loras: dict[str, Path] = field(default_factory=dict)
    #: tokens of loaded textual-inversion embeddings -> file
    embeddings: dict[str, Path] = field(default_factory=dict)
    #: the standalone VAE file decoding instead of the checkpoint's own (None: the checkpoint's), and that own VAE
    vae: Path | None = None
    own_vae: Any = None
    hits: int = 0


class PipelineCache:
    """LRU of loaded pipelines under a byte budget (RAM on CPU, VRAM on CUDA).

    Not thread-safe on its own: the renderer uses it under the device lock. The newest pipeline is always
    kept, even alone over budget, because the render that asked for it needs it.
    """

    def __init__(self, budget_bytes: int):
        self.budget_bytes = int(budget_bytes)
        self._entries: OrderedDict[tuple, CachedPipeline] = OrderedDict()
        self.loads = 0
        self.evictions = 0
        self._guard = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: tuple) -> bool:
        return key in self._entries

    @property
    def used_bytes(self) -> int:
        return sum(e.nbytes for e in self._entries.values())

    def get_or_load(self, key: tuple, loader, *, estimate: int = 0) -> CachedPipeline:
        """The cached entry for ``key``, or ``loader()`` -> (pipe, ecosystem, base scheduler config, offload) as a
        CachedPipeline after evicting to make room."""
        with self._guard:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                entry.hits += 1
                return entry
            self._evict_until(self.budget_bytes - estimate)
        t0 = time.perf_counter()
        pipe, ecosystem, base_config, offload = loader()
        entry = CachedPipeline(
            key=key,
            pipe=pipe,
            ecosystem=ecosystem,
            nbytes=pipeline_nbytes(pipe),
            base_scheduler_config=base_config,
            load_seconds=time.perf_counter() - t0,
            offload=offload,
        )
        with self._guard:
            self._entries[key] = entry
            self.loads += 1
            self._evict_until(self.budget_bytes, keep=key)
        return entry

    def _evict_until(self, limit: int, keep: tuple | None = None) -> None:
        freed = False
        while self._entries and self.used_bytes > max(limit, 0):
            oldest = next(iter(self._entries))
            if oldest == keep:
                break
            del self._entries[oldest]
            self.evictions += 1
            freed = True
        if freed:
            _release_memory()

    def resize(self, budget_bytes: int) -> None:
        """Change the budget, evicting least-recently-used pipelines (the newest one stays)."""
        with self._guard:
            self.budget_bytes = int(budget_bytes)
            newest = next(reversed(self._entries)) if self._entries else None
            self._evict_until(self.budget_bytes, keep=newest)

    def clear(self) -> None:
        with self._guard:
            self._entries.clear()
        _release_memory()


def _release_memory() -> None:
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass
