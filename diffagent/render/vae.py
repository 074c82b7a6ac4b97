"""Standalone VAEs (A1111's "SD VAE"): a VAE file that decodes instead of the checkpoint's own.

Civitai and the reference repositories ship VAEs as single files in the original (LDM) key layout
(``encoder.down.0.block.0.conv1.weight``: vae-ft-mse-840000, kl-f8-anime2, sdxl_vae) or as diffusers folders. A
single file loads against the ``vae`` config of the ecosystem's skeleton, so it needs no network. The checkpoint's
own VAE is kept on the cached pipeline entry and comes back when a call names no VAE.
"""

from __future__ import annotations

from pathlib import Path

from diffagent.errors import UserInputError
from diffagent.render.pipelines import SINGLE_FILE_SUFFIXES, CachedPipeline, dtype_kwarg, refuse_unsafe_pickle


def load_vae(path: Path, skeleton: Path | None, *, name: str, device: str, dtype):
    """An ``AutoencoderKL`` on ``device`` from a single file (against ``skeleton/vae``) or a diffusers folder."""
    from diffusers import AutoencoderKL

    path = Path(path)
    kw = {dtype_kwarg(): dtype}
    try:
        if path.is_dir():
            folder = path / "vae" if (path / "vae" / "config.json").is_file() else path
            if not (folder / "config.json").is_file():
                raise UserInputError(
                    f"VAE {name!r}: {path} is a folder without a VAE config.json; give a diffusers "
                    "VAE folder or a single .safetensors file"
                )
            vae = AutoencoderKL.from_pretrained(str(folder), local_files_only=True, **kw)
        elif path.suffix.lower() in SINGLE_FILE_SUFFIXES:
            if skeleton is None:
                raise UserInputError(f"VAE {name!r}: no config skeleton to load a single file against")
            vae = AutoencoderKL.from_single_file(
                str(path), config=str(skeleton), subfolder="vae", local_files_only=True, **kw
            )
        else:
            raise UserInputError(
                f"VAE {name!r}: cannot load {path.name}; expected a diffusers folder or a "
                f"{', '.join(SINGLE_FILE_SUFFIXES)} file"
            )
    except UserInputError:
        raise
    except Exception as e:  # noqa: BLE001 - a wrong or broken file surfaces as many exception types
        refuse_unsafe_pickle(path, e, f"VAE ({name!r})")
        raise UserInputError(
            f"VAE {name!r} ({path.name}) could not be loaded as a VAE of this checkpoint's base "
            f"model: {type(e).__name__}: {str(e)[:300]}; pick a VAE made for it, or none"
        ) from e
    return vae.to(device)


def apply_vae(entry: CachedPipeline, path: Path | None, loader) -> None:
    """Make ``path`` (or, for None, the checkpoint's own VAE) the pipeline's decoder; ``loader(path)`` loads one."""
    pipe = entry.pipe
    path = Path(path) if path is not None else None
    if path == entry.vae:
        return
    if entry.own_vae is None:
        entry.own_vae = pipe.vae
    pipe.vae = entry.own_vae if path is None else loader(path)
    entry.vae = path
