"""Session fixtures: tiny SD 1.5 / SDXL checkpoints (folder, .safetensors, .ckpt), LoRAs, embeddings and a
resolver that maps ``ModelRef`` ids to them, so renderer tests need neither a registry nor a network."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("OMP_NUM_THREADS", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from diffagent.apicall import ApiCall, EmbeddingRef, LoraRef, ModelRef  # noqa: E402
from diffagent.errors import NotFoundError  # noqa: E402
from diffagent.families import Family  # noqa: E402
from diffagent.render.weights import ResolvedWeights  # noqa: E402
from diffagent.settings import Settings  # noqa: E402

from . import tiny_models as tm  # noqa: E402


class TinyModels:
    """Paths of the built fixtures plus ready-made refs and a resolver over them."""

    def __init__(self, root: Path):
        import torch

        torch.set_num_threads(1)
        tm.quiet_diffusers()
        self.root = root
        sd15 = tm.build_sd15(root / "sd15")
        sdxl = tm.build_sdxl(root / "sdxl")
        tm.save_single_file(sd15, root / "sd15-single.safetensors")
        tm.save_single_file(sd15, root / "sd15-single.ckpt")
        tm.save_single_file(sdxl, root / "sdxl-single.safetensors")
        self.skeletons = {
            "sd1": tm.config_skeleton(root / "sd15", root / "skeleton-sd1"),
            "sdxl": tm.config_skeleton(root / "sdxl", root / "skeleton-sdxl"),
        }
        self.sd15_pipe, self.sdxl_pipe = sd15, sdxl
        sd, xl = Family.SD1, Family.SDXL
        # id -> (path, family, type, name, sha256)
        self.files: dict[int, tuple[Path, Family, str, str]] = {
            1: (root / "sd15", sd, "checkpoint", "tiny-sd15"),
            2: (root / "sd15-single.safetensors", sd, "checkpoint", "tiny-sd15-single"),
            3: (root / "sd15-single.ckpt", sd, "checkpoint", "tiny-sd15-ckpt"),
            10: (root / "sdxl", xl, "checkpoint", "tiny-sdxl"),
            11: (root / "sdxl-single.safetensors", Family.PONY, "checkpoint", "tiny-pony-single"),
            21: (tm.save_kohya_lora(sd15, root / "lora-kohya.safetensors", seed=1), sd, "lora", "kohya-lora"),
            22: (tm.save_diffusers_lora(sd15, root / "lora-diffusers.safetensors", seed=2), sd, "lora", "diff-lora"),
            23: (tm.save_kohya_lora(sdxl, root / "lora-xl.safetensors", seed=3), xl, "lora", "xl-lora"),
            31: (tm.save_embedding(sd15, root / "emb-sd15.safetensors"), sd, "embedding", "tiny-emb"),
            32: (tm.save_embedding(sdxl, root / "emb-sdxl.safetensors"), xl, "embedding", "tiny-emb-xl"),
            41: (tm.save_vae(sd15, root / "vae-sd15.safetensors"), sd, "vae", "tiny-vae"),
            42: (tm.save_vae(sdxl, root / "vae-sdxl.safetensors"), xl, "vae", "tiny-vae-xl"),
            43: (root / "lora-kohya.safetensors", sd, "vae", "a-lora-listed-as-vae"),
        }
        self.resolved: list[int] = []

    def ref(self, version_id: int) -> ModelRef:
        path, family, _, name = self.files[version_id]
        return ModelRef(id=version_id, air=f"urn:air:test:{version_id}", name=name, family=family)

    def lora(self, version_id: int, weight: float = 1.0) -> LoraRef:
        return LoraRef(**self.ref(version_id).model_dump(), weight=weight)

    def embedding(self, version_id: int, token: str, negative: bool = False) -> EmbeddingRef:
        return EmbeddingRef(**self.ref(version_id).model_dump(), token=token, negative=negative)

    def resolver(self, ref: ModelRef) -> ResolvedWeights:
        if ref.id not in self.files:
            raise NotFoundError(f"no tiny model {ref.id}")
        self.resolved.append(ref.id)
        path, family, kind, name = self.files[ref.id]
        return ResolvedWeights(path=path, sha256=f"{ref.id:064x}", family=family, type=kind, name=name)

    def call(self, checkpoint: int = 1, **kw) -> ApiCall:
        base = dict(
            prompt="a photo of a cat",
            negative_prompt="blurry",
            steps=3,
            cfg_scale=7.0,
            width=64,
            height=64,
            seed=42,
            sampler="Euler",
        )
        base.update(kw)
        return ApiCall(checkpoint=self.ref(checkpoint), **base)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> TinyModels:
    return TinyModels(tmp_path_factory.mktemp("tiny-models"))


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        device="cpu",
        allow_downloads=False,
        registry=tmp_path / "no-registry.db",
        pipeline_cache_gb=1.0,
    )


@pytest.fixture
def make_renderer(tiny, settings):
    from diffagent.render import Renderer

    made = []

    def make(**kw):
        kw.setdefault("resolver", tiny.resolver)
        kw.setdefault("skeletons", tiny.skeletons)
        r = Renderer(settings, **kw)
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


@pytest.fixture(scope="session")
def shared_renderer(tiny, tmp_path_factory):
    """One renderer for tests that only read images: keeps pipelines warm across tests."""
    from diffagent.render import Renderer

    data = tmp_path_factory.mktemp("shared-renderer")
    s = Settings(data_dir=data, device="cpu", allow_downloads=False, registry=data / "none.db", pipeline_cache_gb=1.0)
    r = Renderer(s, resolver=tiny.resolver, skeletons=tiny.skeletons)
    yield r
    r.close()
