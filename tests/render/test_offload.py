"""CPU offload for large models (``Settings.offload``): which mode a pipeline gets, and how it is applied.

The hooks themselves need a CUDA device; ``benchmarks/gpu_render.py --flow`` runs every mode there and reports the
memory each saves. Here: the decision table, the sizes it reads, and the placement calls."""

from __future__ import annotations

import pytest

from diffagent.errors import UserInputError
from diffagent.render.pipelines import choose_offload, component_nbytes, place_pipeline
from diffagent.settings import Settings

GB = 2**30
FLUX_DEV = {"transformer": 24 * GB, "text_encoder_2": 9 * GB, "text_encoder": GB // 4, "vae": GB // 6}


@pytest.mark.parametrize(
    ("mode", "free", "expected"),
    [
        ("auto", 80 * GB, "none"),  # the whole pipeline fits with headroom
        ("auto", 40 * GB, "model"),  # 33 GB of weights do not, the 24 GB transformer does
        ("auto", 24 * GB, "sequential"),  # not even the transformer with headroom
        ("auto", None, "none"),  # free memory unknown: plain placement
        ("none", 8 * GB, "none"),  # an explicit mode is kept on CUDA
        ("model", 80 * GB, "model"),
        ("sequential", 80 * GB, "sequential"),
    ],
)
def test_auto_picks_the_first_mode_that_fits_the_free_memory(mode, free, expected):
    assert choose_offload(mode, "cuda", FLUX_DEV, free) == expected
    assert choose_offload(mode, "cuda:1", FLUX_DEV, free) == expected


@pytest.mark.parametrize("device", ["cpu", "mps"])
@pytest.mark.parametrize("mode", ["auto", "model", "sequential"])
def test_offload_means_nothing_off_cuda(device, mode):
    assert choose_offload(mode, device, FLUX_DEV, 1) == "none"


def test_an_unknown_mode_is_refused_with_the_choices():
    with pytest.raises(UserInputError, match="auto, none, model or sequential"):
        choose_offload("disk", "cuda", FLUX_DEV, 80 * GB)


def test_the_setting_reads_the_environment_and_refuses_unknown_values(monkeypatch):
    monkeypatch.setenv("DIFFAGENT_OFFLOAD", "sequential")
    assert Settings().offload == "sequential"
    monkeypatch.setenv("DIFFAGENT_OFFLOAD", "disk")
    with pytest.raises(ValueError, match="offload"):
        Settings()


def test_component_sizes_of_a_folder_a_transformer_file_and_a_single_file(tmp_path):
    folder = tmp_path / "flux"
    for part, size in {"transformer": 300, "text_encoder_2": 200, "vae": 50}.items():
        (folder / part).mkdir(parents=True)
        (folder / part / "diffusion_pytorch_model.safetensors").write_bytes(b"\0" * size)
        (folder / part / "config.json").write_text("{}")  # configs are not weights
    (folder / "transformer" / "diffusion_pytorch_model-00002.safetensors").write_bytes(b"\0" * 100)
    assert component_nbytes(folder) == {"transformer": 400, "text_encoder_2": 200, "vae": 50}
    finetune = tmp_path / "finetune.safetensors"
    finetune.write_bytes(b"\0" * 700)
    # a transformer file replaces its reference folder's transformer
    assert component_nbytes(finetune, folder) == {"transformer": 700, "text_encoder_2": 200, "vae": 50}
    assert component_nbytes(finetune) == {"checkpoint": 700}


class FakePipe:
    def __init__(self):
        self.calls = []

    def to(self, device):
        self.calls.append(("to", device))
        return self

    def enable_model_cpu_offload(self, device):
        self.calls.append(("model", str(device)))

    def enable_sequential_cpu_offload(self, device):
        self.calls.append(("sequential", str(device)))


@pytest.mark.parametrize(
    ("mode", "call"),
    [("none", ("to", "cuda:1")), ("model", ("model", "cuda:1")), ("sequential", ("sequential", "cuda:1"))],
)
def test_placement_moves_the_pipeline_or_installs_the_hooks_for_that_gpu(mode, call):
    pipe = FakePipe()
    assert place_pipeline(pipe, "cuda:1", mode) is pipe
    assert pipe.calls == [call]


def test_a_cpu_render_ignores_the_setting_and_says_so(tiny, tmp_path):
    """The renderer asks ``choose_offload`` on its own device: on CPU the pipeline is placed plainly."""
    from diffagent.render import Renderer

    settings = Settings(
        data_dir=tmp_path, device="cpu", allow_downloads=False, registry=tmp_path / "none.db", offload="sequential"
    )
    renderer = Renderer(settings, resolver=tiny.resolver, skeletons=tiny.skeletons)
    try:
        result = renderer.render(tiny.call(1, steps=2), output_dir=tmp_path)
    finally:
        renderer.close()
    assert result.offload == "none"


@pytest.mark.parametrize("vid", [1, 10])
def test_a_model_offloaded_pipeline_renders_the_same_image(tiny, tmp_path, monkeypatch, vid):
    """diffusers' model CPU offload also runs with the CPU as its execution device, so the offloaded path (the hooks
    moving each component in for its forward pass, SD 1.5 / SDXL prompt encoding on the execution device) is checked
    here against plain placement: the same image, to a rounding step. Loading a LoRA or an embedding re-installs the
    hooks on an accelerator only, so that, and sequential offload, run in the GPU script (``gpu_render.py --flow``)."""
    import numpy as np
    from PIL import Image

    import diffagent.render.pipelines as pipelines
    from diffagent.render import Renderer

    def image(offload: str) -> np.ndarray:
        if offload != "none":
            monkeypatch.setattr(pipelines, "choose_offload", lambda *a, **k: offload)
        settings = Settings(
            data_dir=tmp_path / offload, device="cpu", allow_downloads=False, registry=tmp_path / "none.db"
        )
        renderer = Renderer(settings, resolver=tiny.resolver, skeletons=tiny.skeletons)
        try:
            result = renderer.render(tiny.call(vid, steps=2), output_dir=tmp_path / offload)
            assert result.offload == offload
            return np.asarray(Image.open(result.path))
        finally:
            renderer.close()

    plain, offloaded = image("none").astype(int), image("model").astype(int)
    assert np.abs(plain - offloaded).max() <= 2  # SDXL's VAE upcast under the hooks rounds a few pixels apart
