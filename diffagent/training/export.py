"""Export: peft LoRA adapter -> GGUF adapter that llama.cpp applies (``Llama(lora_path=...)``).

The converters (``convert_lora_to_gguf.py``, ``convert_hf_to_gguf.py`` and their ``conversion`` and
``gguf-py`` packages) ship in the llama-cpp-python **sdist** but are not installed with the wheel.
They are fetched once with ``pip download`` (the ordinary PyPI client) into the cache dir, and only
those files are extracted; each version is kept in its own folder, so the converter always matches
the llama.cpp that will load the file.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np

from diffagent.atomic import write_atomic
from diffagent.errors import DiffAgentError, MissingDependency, UserInputError
from diffagent.training.io import replace_dir

log = logging.getLogger(__name__)

_NEEDED = ("convert_lora_to_gguf.py", "convert_hf_to_gguf.py", "conversion/", "gguf-py/")


class ExportFailed(DiffAgentError):
    """A converter could not be fetched or failed; the message says why and what to run instead."""


def _sdist(cache: Path, version: str, allow_download: bool) -> Path:
    name = f"llama_cpp_python-{version}.tar.gz"
    found = cache / name
    if found.is_file():
        return found
    if not allow_download:
        raise ExportFailed(
            f"the llama.cpp converters are not cached ({found} missing) and downloads are off; "
            f"run: pip download --no-deps --no-binary :all: llama-cpp-python=={version} -d {cache}"
        )
    cache.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-binary",
        ":all:",
        f"llama-cpp-python=={version}",
        "-d",
        str(cache),
    ]
    log.warning("fetching the llama.cpp converters: %s (once; a 77 MB sdist, a few minutes)", " ".join(cmd))
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0 or not found.is_file():
        tail = (res.stderr or res.stdout).strip().splitlines()[-3:]
        raise ExportFailed(
            f"could not download the llama-cpp-python {version} sdist with pip ({' | '.join(tail)}); "
            f"download {name} from PyPI by hand into {cache} and rerun"
        )
    return found


def converter_dir(cache_dir: Path, version: str = "0.3.36", *, allow_download: bool = True) -> Path:
    """A folder holding llama.cpp's converter scripts of llama-cpp-python ``version``."""
    root = Path(cache_dir) / "llama-cpp-convert"
    target = root / version
    if (target / "convert_lora_to_gguf.py").is_file():
        return target
    sdist = _sdist(root, version, allow_download)
    prefix = f"llama_cpp_python-{version}/vendor/llama.cpp/"

    def extract(tmp: Path) -> None:
        with tarfile.open(sdist, "r:gz") as tar:
            members = []
            for m in tar.getmembers():
                rel = m.name[len(prefix) :] if m.name.startswith(prefix) else None
                if rel and (m.isfile() or m.isdir()) and rel.startswith(_NEEDED):
                    m.name = rel
                    members.append(m)
            if not any(m.name == "convert_lora_to_gguf.py" for m in members):
                raise ExportFailed(
                    f"{sdist.name} has no vendor/llama.cpp/convert_lora_to_gguf.py; "
                    "choose another export.llama_cpp_version"
                )
            tar.extractall(tmp, members=members, filter="data")

    return replace_dir(target, extract)


def _run(cmd: list[str], what: str) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}  # the converters must never fetch a model
    env.pop("NO_LOCAL_GGUF", None)  # use the gguf-py that ships with this converter
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode != 0:
        tail = "\n".join((res.stderr or res.stdout).strip().splitlines()[-8:])
        raise ExportFailed(f"{what} failed (exit {res.returncode}):\n{tail}")


def export_adapter(adapter_dir: Path, base_hf_dir: Path, out: Path, *, converter: Path, outtype: str = "q8_0") -> Path:
    """peft adapter folder -> GGUF adapter at ``out`` (written atomically).

    ``base_hf_dir`` needs only the base model's ``config.json`` (the converter maps tensor names
    with it), not its weights.
    """
    adapter_dir, out = Path(adapter_dir), Path(out)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise UserInputError(f"{adapter_dir} is not a peft adapter folder (no adapter_config.json)")
    if not (Path(base_hf_dir) / "config.json").is_file():
        raise UserInputError(f"{base_hf_dir} has no config.json; run a training stage first (it creates it)")
    return _convert(
        converter / "convert_lora_to_gguf.py", ["--base", str(base_hf_dir), "--outtype", outtype], str(adapter_dir), out
    )


def export_model(hf_dir: Path, out: Path, *, converter: Path, outtype: str = "q8_0") -> Path:
    """A whole transformers model folder (e.g. base + merged adapter) -> GGUF model at ``out``."""
    return _convert(Path(converter) / "convert_hf_to_gguf.py", ["--outtype", outtype], str(hf_dir), Path(out))


def _convert(script: Path, options: list[str], source: str, out: Path) -> Path:
    """Run a llama.cpp converter into a temporary file beside ``out``, then move it into place."""
    return write_atomic(
        out, lambda tmp: _run([sys.executable, str(script), *options, "--outfile", str(tmp), source], script.name)
    )


def merge_adapter(base_hf_dir: Path, adapter_dir: Path, out_dir: Path) -> Path:
    """Base + LoRA merged into plain weights (for ``export_model``)."""
    from diffagent.training.model import load_base, load_lora

    model = load_lora(load_base(base_hf_dir), adapter_dir, trainable=False).merge_and_unload()
    return replace_dir(out_dir, lambda tmp: model.save_pretrained(tmp))


def logit_shift(base_gguf: Path, adapter_gguf: Path, tokens: list[int]) -> float:
    """Largest change the adapter makes to llama.cpp's next-token logits after ``tokens``
    (a check that the file loads and does something)."""
    try:
        import llama_cpp
    except ImportError as e:
        raise MissingDependency("llama-cpp-python", "base") from e

    def last_logits(lora: Path | None) -> np.ndarray:
        llm = llama_cpp.Llama(
            model_path=str(base_gguf),
            lora_path=str(lora) if lora else None,
            n_ctx=512,
            n_threads=2,
            logits_all=False,
            verbose=False,
        )
        llm.eval(tokens)
        ptr = llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1)
        out = np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),)).astype(np.float32, copy=True)
        llm.close()
        return out

    return float(np.abs(last_logits(adapter_gguf) - last_logits(None)).max())
