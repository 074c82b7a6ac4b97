"""``Renderer``: executes an ``ApiCall`` with diffusers. One per process; it owns the pipeline cache.

Order of work in ``render``: validate everything that can be validated without weights (sampler, family,
add-on compatibility), resolve/download the files (outside the device lock, so a download never blocks
another render), then, holding the device's lock, get the pipeline from the cache, swap LoRAs/embeddings,
set the scheduler and denoise. The PNG is written after the lock is released.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from diffagent.apicall import ApiCall, ModelRef
from diffagent.errors import DiffAgentError, UserInputError
from diffagent.families import FLOW, RENDERER_ECOSYSTEMS, compatible, ecosystem_of
from diffagent.prompttext import strip_resource_tags
from diffagent.render import png
from diffagent.render.prompt import with_tokens
from diffagent.render.schedulers import make_scheduler, sampler_spec
from diffagent.render.weights import RegistryResolver, ResolvedWeights, Resolver, WeightStore, cancellable
from diffagent.settings import Settings, get_settings

Progress = Callable[[int, int], None]

#: one lock per device, shared by every Renderer in the process: the GPU runs one denoising loop at a time
_DEVICE_LOCKS: dict[str, threading.Lock] = {}
_DEVICE_LOCKS_GUARD = threading.Lock()


def device_lock(device: str) -> threading.Lock:
    with _DEVICE_LOCKS_GUARD:
        return _DEVICE_LOCKS.setdefault(device, threading.Lock())


class RenderCancelled(DiffAgentError):
    """The caller's cancel event was set; the render stopped and released the device."""


class RenderResult(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True)

    path: Path = Field(description="the PNG, with A1111 parameters embedded")
    width: int
    height: int
    seed: int
    device: str
    seconds: float = Field(description="wall time of the whole render, downloads and loading included")
    parameters: str = Field(description="A1111 generation parameters, as embedded in the PNG")
    call: ApiCall = Field(description="the call as rendered (embedding tokens added to the prompts)")
    sampler_exact: bool = Field(True, description="False when diffusers has only an approximation of the sampler")
    cache_hit: bool = Field(False, description="the checkpoint was already loaded")
    offload: str = Field("none", description="CPU offload the checkpoint's pipeline runs with (Settings.offload)")
    worker: str = Field("local", description="where it ran: 'local', or 'ray:<node>:<pid>' for a Ray Serve replica")
    timings: dict[str, float] = Field(default_factory=dict, description="seconds per phase")
    preview_png: bytes = Field(
        b"", exclude=True, repr=False, description="bounded preview: longest side <= 512 px, <= 512 KiB"
    )


def require_render_extra() -> None:
    """A ``MissingDependency`` naming the ``render`` extra where torch or diffusers is not installed (the base
    install selects without them)."""
    from diffagent.errors import MissingDependency

    for module in ("torch", "diffusers"):
        try:
            __import__(module)
        except ImportError as e:
            raise MissingDependency(module, "render") from e


def resolve_device(name: str) -> str:
    require_render_extra()
    import torch

    if name != "auto":
        if name.startswith("cuda") and not torch.cuda.is_available():
            raise UserInputError(f"device {name!r} requested but CUDA is not available; use --device cpu")
        return name
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def autov2(sha256: str | None) -> str | None:
    """A1111's short 'AutoV2' hash, which Civitai uses to link an image's resources."""
    return sha256[:10].lower() if sha256 else None


class Renderer:
    """Owns the pipeline cache and the device; renders ``ApiCall`` objects. Thread-safe."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        resolver: Resolver | None = None,
        registry=None,
        device: str | None = None,
        skeletons: dict[str, Path] | None = None,
        cache_bytes: int | None = None,
    ):
        self.settings = settings or get_settings()
        self.device = resolve_device(device or self.settings.device)
        self._resolver = resolver
        self._registry = registry
        self._skeletons = dict(skeletons or {})
        from diffagent.render.pipelines import PipelineCache

        budget = cache_bytes if cache_bytes is not None else int(self.settings.pipeline_cache_gb * 2**30)
        self.cache = PipelineCache(budget)
        self._init_lock = threading.Lock()

    # ------------------------------------------------------------------------------ plumbing
    @property
    def dtype(self):
        import torch

        # fp16 halves VRAM and doubles speed on CUDA; CPU kernels are fp32-only in practice
        return torch.float16 if self.device.startswith("cuda") else torch.float32

    def dtype_for(self, ecosystem: str):
        """``dtype``, except bf16 for FLUX.1 / SD 3 on CUDA: their T5 encoder and transformer overflow fp16 (black
        or NaN images), and they were trained and released in bf16."""
        import torch

        if ecosystem in FLOW and self.device.startswith("cuda") and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return self.dtype

    @property
    def resolver(self) -> Resolver:
        with self._init_lock:
            if self._resolver is None:
                registry = self._registry
                if registry is None:
                    from diffagent.registry.store import Registry

                    registry = Registry.from_settings(self.settings)
                store = WeightStore(
                    self.settings.weights_dir,
                    allow_downloads=self.settings.allow_downloads,
                    civitai_api_key=self.settings.civitai_api_key,
                )
                self._resolver = RegistryResolver(registry, store)
            return self._resolver

    def skeleton(self, ecosystem: str) -> Path:
        with self._init_lock:
            if ecosystem not in self._skeletons:
                from diffagent.render.skeletons import ensure_skeleton

                self._skeletons[ecosystem] = ensure_skeleton(ecosystem, self.settings.cache_dir)
            return self._skeletons[ecosystem]

    def _resolve(self, ref: ModelRef, kind: str, checkpoint_family) -> ResolvedWeights:
        weights = self.resolver(ref)
        if kind != "checkpoint" and not compatible(checkpoint_family, weights.family):
            raise UserInputError(
                f"{kind} {ref.name!r} is registered as {weights.family.value}, which does not fit "
                f"the {checkpoint_family.value} checkpoint; remove it or pick a matching one"
            )
        if kind == "checkpoint" and ecosystem_of(weights.family) != ecosystem_of(checkpoint_family):
            raise UserInputError(
                f"checkpoint {ref.name!r} is registered as {weights.family.value}, but the call "
                f"says {checkpoint_family.value}; rebuild the call from the registry"
            )
        if kind == "checkpoint" and weights.type not in ("checkpoint", "diffusers"):
            raise UserInputError(f"{ref.name!r} is a {weights.type}, not a checkpoint")
        if kind == "lora" and weights.type not in ("lora", "locon"):
            raise UserInputError(f"{ref.name!r} is a {weights.type}, not a LoRA")
        if kind == "embedding" and weights.type != "embedding":
            raise UserInputError(f"{ref.name!r} is a {weights.type}, not a textual-inversion embedding")
        if kind == "vae" and weights.type != "vae":
            raise UserInputError(f"{ref.name!r} is a {weights.type}, not a VAE")
        return weights

    def _load(self, weights: ResolvedWeights, ecosystem: str, components: dict[str, int]):
        """(pipe, ecosystem, its scheduler config, the offload it runs with) for the cache; ``components``: the
        weights' bytes per component (``component_nbytes``), which decide the offload."""
        from diffagent.render.pipelines import choose_offload, cuda_free_bytes, load_pipeline

        # FLUX.1 / SD 3 load from folders (a FLUX.1 transformer file with its reference folder): no skeleton to make
        skeleton = None if weights.path.is_dir() or ecosystem in FLOW else self.skeleton(ecosystem)
        offload = choose_offload(self.settings.offload, self.device, components, cuda_free_bytes(self.device))
        pipe = load_pipeline(
            weights.path,
            ecosystem,
            device=self.device,
            dtype=self.dtype_for(ecosystem),
            skeleton=skeleton,
            reference=weights.reference,
            offload=offload,
        )
        return pipe, ecosystem, dict(pipe.scheduler.config), offload

    # -------------------------------------------------------------------------------- render
    def render(
        self,
        call: ApiCall,
        *,
        progress: Progress | None = None,
        cancel: threading.Event | None = None,
        output_dir: Path | None = None,
    ) -> RenderResult:
        t0 = time.perf_counter()
        timings: dict[str, float] = {}
        ecosystem = ecosystem_of(call.checkpoint.family)
        if ecosystem not in RENDERER_ECOSYSTEMS:
            raise UserInputError(
                f"{call.checkpoint.name!r} is a {call.checkpoint.family.value} checkpoint; "
                "diffagent renders SD 1.x, SDXL, FLUX.1 and SD 3 checkpoints only"
            )
        spec = sampler_spec(call.sampler, flow=ecosystem in FLOW)  # unknown sampler: fail before any file is touched

        with cancellable(cancel):  # a weight download stops when the caller cancels
            ckpt = self._resolve(call.checkpoint, "checkpoint", call.checkpoint.family)
            loras = [(ref, self._resolve(ref, "lora", call.checkpoint.family)) for ref in call.loras]
            embeddings = [(ref, self._resolve(ref, "embedding", call.checkpoint.family)) for ref in call.embeddings]
            vae = (call.vae, self._resolve(call.vae, "vae", call.checkpoint.family)) if call.vae else None
        timings["resolve"] = time.perf_counter() - t0

        positive_tokens = [e.token for e in call.embeddings if not e.negative]
        negative_tokens = [e.token for e in call.embeddings if e.negative]
        rendered = call.model_copy(
            update={
                "prompt": with_tokens(call.prompt, positive_tokens),
                "negative_prompt": with_tokens(call.negative_prompt, negative_tokens),
            }
        )
        prompt = strip_resource_tags(rendered.prompt)  # A1111 removes extra-network tags before encoding
        negative = strip_resource_tags(rendered.negative_prompt)

        image, entry, cache_hit = self._denoise(
            call, ecosystem, ckpt, loras, embeddings, vae, prompt, negative, progress, cancel, timings
        )

        t1 = time.perf_counter()
        parameters = self.parameters_text(rendered, ckpt, loras, embeddings, vae)
        out_dir = Path(output_dir) if output_dir is not None else self.settings.output_dir
        name = f"{time.strftime('%Y%m%d-%H%M%S')}-{call.seed}-{uuid.uuid4().hex[:8]}.png"
        path = png.write_png(image, out_dir, name, parameters)
        preview = png.preview_png(image, parameters)
        timings["save"] = time.perf_counter() - t1
        return RenderResult(
            path=path,
            width=image.width,
            height=image.height,
            seed=call.seed,
            device=self.device,
            seconds=time.perf_counter() - t0,
            parameters=parameters,
            call=rendered,
            sampler_exact=spec.exact,
            cache_hit=cache_hit,
            timings=timings,
            preview_png=preview,
            offload=entry.offload,
        )

    def _denoise(
        self,
        call: ApiCall,
        ecosystem: str,
        ckpt: ResolvedWeights,
        loras,
        embeddings,
        vae,
        prompt: str,
        negative: str,
        progress: Progress | None,
        cancel: threading.Event | None,
        timings: dict[str, float],
    ):
        import torch

        from diffagent.render.encode import encode
        from diffagent.render.loras import apply_embeddings, apply_loras
        from diffagent.render.pipelines import component_nbytes
        from diffagent.render.vae import apply_vae, load_vae

        lock = device_lock(self.device)
        t_wait = time.perf_counter()
        while not lock.acquire(timeout=0.05):
            if cancel is not None and cancel.is_set():
                raise RenderCancelled("render cancelled while waiting for the device")
        try:
            timings["wait"] = time.perf_counter() - t_wait
            if cancel is not None and cancel.is_set():
                raise RenderCancelled("render cancelled before it started")
            t = time.perf_counter()
            key = (str(ckpt.path), ecosystem, self.device, str(self.dtype_for(ecosystem)))
            cached = key in self.cache  # under the device lock: nothing loads or evicts meanwhile
            # the weights' sizes size the eviction and the offload: read from disk only when a load follows
            components = {} if cached else component_nbytes(ckpt.path, ckpt.reference)
            entry = self.cache.get_or_load(
                key, lambda: self._load(ckpt, ecosystem, components), estimate=sum(components.values())
            )
            timings["load"] = time.perf_counter() - t
            t = time.perf_counter()
            apply_loras(entry, [(ref.id, ref.name, w.path, ref.weight) for ref, w in loras])
            apply_embeddings(entry, [(ref.token, ref.name, w.path) for ref, w in embeddings])
            apply_vae(
                entry,
                vae[1].path if vae else None,
                lambda path: load_vae(
                    path,
                    None if path.is_dir() else self.skeleton(ecosystem),
                    name=vae[0].name,
                    device=self.device,
                    dtype=self.dtype,
                ),
            )
            pipe = entry.pipe
            pipe.scheduler = make_scheduler(call.sampler, entry.base_scheduler_config, seed=call.seed, shift=call.shift)
            timings["prepare"] = time.perf_counter() - t

            def on_step_end(p, step: int, timestep, kwargs: dict[str, Any]) -> dict[str, Any]:
                if progress is not None:
                    progress(step + 1, p.num_timesteps)
                if cancel is not None and cancel.is_set():
                    raise RenderCancelled(f"render cancelled after step {step + 1}")
                return kwargs

            # the generator lives on the device, as A1111's default RNG does: same seed + device = same image
            gen_device = "cpu" if self.device == "mps" else self.device
            generator = torch.Generator(device=gen_device).manual_seed(call.seed)
            t = time.perf_counter()
            embeds = encode(pipe, ecosystem, prompt, negative, call.clip_skip)
            timings["encode"] = time.perf_counter() - t
            t = time.perf_counter()
            with torch.inference_mode():
                out = pipe(
                    **embeds,
                    num_inference_steps=call.steps,
                    guidance_scale=call.cfg_scale,
                    width=call.width,
                    height=call.height,
                    generator=generator,
                    callback_on_step_end=on_step_end,
                )
            timings["denoise"] = time.perf_counter() - t
            return out.images[0], entry, cached
        finally:
            lock.release()

    @staticmethod
    def parameters_text(call: ApiCall, ckpt: ResolvedWeights, loras, embeddings, vae=None) -> str:
        """``ApiCall.a1111_parameters()`` plus the resource hashes Civitai links images by."""
        extra: dict[str, object] = {}
        if h := autov2(ckpt.sha256):
            extra["Model hash"] = h
        lora_hashes = [f"{ref.name}: {autov2(w.sha256)}" for ref, w in loras if w.sha256]
        if lora_hashes:
            extra["Lora hashes"] = ", ".join(lora_hashes)
        ti_hashes = [f"{ref.token}: {autov2(w.sha256)}" for ref, w in embeddings if w.sha256]
        if ti_hashes:
            extra["TI hashes"] = ", ".join(ti_hashes)
        if vae and (h := autov2(vae[1].sha256)):
            extra["VAE hash"] = h
        from diffagent import __version__

        extra["Version"] = f"diffagent {__version__}"
        return call.a1111_parameters() + ", " + png.format_fields(extra)

    def close(self) -> None:
        """Drop every cached pipeline (frees RAM/VRAM)."""
        self.cache.clear()


_default: Renderer | None = None
_default_guard = threading.Lock()


def default_renderer(settings: Settings | None = None, registry=None) -> Renderer:
    """The process-wide renderer, created on first use; other settings or registry replace it."""
    global _default
    with _default_guard:
        if (
            _default is None
            or (settings is not None and settings != _default.settings)
            or (registry is not None and registry is not _default._registry)
        ):
            if _default is not None:
                _default.close()
            _default = Renderer(settings, registry=registry)
        return _default


def render(
    call: ApiCall,
    *,
    settings: Settings | None = None,
    registry=None,
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
    output_dir: Path | None = None,
) -> RenderResult:
    """Render ``call`` with the process-wide ``Renderer`` (see ``Renderer.render``)."""
    return default_renderer(settings, registry).render(call, progress=progress, cancel=cancel, output_dir=output_dir)
