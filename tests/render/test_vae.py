"""Standalone VAEs (A1111's "SD VAE") in a call: loaded from the LDM single-file layout, swapped in and out."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from diffagent.errors import UserInputError
from diffagent.render.png import parse_png_parameters


def pixels(res) -> np.ndarray:
    return np.asarray(Image.open(res.path), dtype=np.int16)


@pytest.mark.parametrize("checkpoint,vae", [(2, 41), (11, 42)], ids=["sd15", "sdxl"])
def test_a_standalone_vae_decodes_and_the_checkpoints_own_comes_back(make_renderer, tiny, tmp_path, checkpoint, vae):
    from safetensors.torch import load_file

    r = make_renderer()
    own = pixels(r.render(tiny.call(checkpoint), output_dir=tmp_path))
    swapped = r.render(tiny.call(checkpoint, vae=tiny.ref(vae)), output_dir=tmp_path)
    assert np.abs(pixels(swapped) - own).max() > 0  # same latents, another decoder
    # every tensor of the file is the loaded decoder's (the LDM -> diffusers mapping is complete and exact)
    from tests.render.tiny_models import _vae_to_ldm

    (entry,) = r.cache._entries.values()
    loaded = entry.pipe.vae
    cfg = loaded.config
    mapped = {
        k.removeprefix("first_stage_model."): t
        for k, t in _vae_to_ldm(loaded.state_dict(), len(cfg.block_out_channels), cfg.layers_per_block).items()
    }
    on_disk = load_file(str(tiny.files[vae][0]))
    assert mapped.keys() == on_disk.keys()
    assert all(mapped[k].equal(on_disk[k]) for k in on_disk)
    written = parse_png_parameters(swapped.path).settings
    assert written["VAE"] == tiny.files[vae][3] and len(written["VAE hash"]) == 10
    # a call without a VAE decodes with the checkpoint's own again, from the same cached pipeline
    again = r.render(tiny.call(checkpoint), output_dir=tmp_path)
    assert again.cache_hit and np.array_equal(pixels(again), own)


def test_a_vae_of_another_family_is_refused_by_the_call(tiny):
    with pytest.raises(ValidationError, match="cannot load into"):
        tiny.call(2, vae=tiny.ref(42))


def test_a_file_that_is_not_a_vae_fails_clearly(make_renderer, tiny, tmp_path):
    r = make_renderer()
    with pytest.raises(UserInputError, match="could not be loaded as a VAE"):
        r.render(tiny.call(2, vae=tiny.ref(43)), output_dir=tmp_path)
    # the failed swap left the cached pipeline decoding with its own VAE
    r.render(tiny.call(2), output_dir=tmp_path)


def test_a_lora_is_not_accepted_as_a_vae(make_renderer, tiny, tmp_path):
    with pytest.raises(UserInputError, match="not a VAE"):
        make_renderer().render(tiny.call(2, vae=tiny.ref(31)), output_dir=tmp_path)


def test_pickles_with_objects_are_refused_not_unpickled(tiny, tmp_path):
    """A ``.ckpt`` / ``.pt`` holding more than tensors is refused with the way out, for checkpoints and VAEs alike."""
    import argparse

    import torch

    from diffagent.render.pipelines import load_pipeline
    from diffagent.render.vae import load_vae

    bad = tmp_path / "mixed.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "args": argparse.Namespace(lr=1)}, bad)
    with pytest.raises(
        UserInputError, match="mixed.ckpt is a pickle checkpoint holding non-tensor objects.*safetensors"
    ):
        load_pipeline(bad, "sd1", device="cpu", dtype=None, skeleton=tiny.skeletons["sd1"])
    with pytest.raises(UserInputError, match="mixed.ckpt is a pickle VAE .'odd'. holding non-tensor objects"):
        load_vae(bad, tiny.skeletons["sd1"], name="odd", device="cpu", dtype=None)
