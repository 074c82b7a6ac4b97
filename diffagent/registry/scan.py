"""``diffagent registry scan``: the checkpoints, LoRAs, embeddings and VAEs already on the user's disk.

People keep gigabytes of weights in A1111 / Forge (``models/Stable-diffusion``, ``models/Lora``, ``embeddings``,
``models/VAE``) or ComfyUI (``models/checkpoints``, ``models/loras``, ...) folders. A scan hashes every weight file
(streamed SHA-256, cached by path, size and modification time, so a second scan reads nothing), and then:

- a file whose hash is a registry version's file (Civitai publishes the SHA-256 of every file) is recorded as that
  version's ``local_path``: the renderer uses it before any download, and the model counts as locally available;
- an unknown ``.safetensors`` file becomes a local model of its own, described by what its header says (kohya
  ``ss_*`` and ``modelspec.*`` metadata, else the tensor names: which family, which kind of file), with an id in
  the local range (``LOCAL_ID_BASE`` + the first 40 bits of its hash), so it can be selected and rendered;
- a pickle (``.ckpt``, ``.pt``) is never opened: matched by hash, or skipped with the reason.

Both changes are transactional (the import of unknown files, then the local paths in one transaction).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import text

from diffagent.atomic import write_atomic
from diffagent.errors import UserInputError
from diffagent.families import flat_tensor_names, flow_family_of_keys
from diffagent.registry.index import SEARCHABLE_TYPES
from diffagent.registry.location import Location

WEIGHT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
#: ids of models found only on disk: far above Civitai's ids, below SQLite's integer limit
LOCAL_ID_BASE = 10**12
#: folder names (lower-cased) of A1111 / Forge / ComfyUI model folders -> registry type
FOLDER_TYPES = {
    "stable-diffusion": "checkpoint",
    "checkpoints": "checkpoint",
    "lora": "lora",
    "loras": "lora",
    "lycoris": "locon",
    "embeddings": "embedding",
    "textual_inversion": "embedding",
    "vae": "vae",
}
_CHUNK = 1 << 20
_HEADER_MAX = 100 << 20  # a safetensors header larger than this is not one


@dataclass
class ScanReport:
    files: int = 0
    bytes_hashed: int = 0
    from_cache: int = 0
    hash_seconds: float = 0.0
    matched: list[tuple[str, int]] = field(default_factory=list)  # (path, version id)
    imported: list[tuple[str, int, str, str]] = field(default_factory=list)  # (path, id, type, base model)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, why)

    def summary(self) -> str:
        gb = self.bytes_hashed / 1e9
        rate = f", {self.hash_seconds / gb:.1f} s/GB" if gb > 0.01 else ""
        lines = [
            f"{self.files} weight files: {len(self.matched)} matched to registry versions, "
            f"{len(self.imported)} imported as local models, {len(self.skipped)} skipped; "
            f"hashed {gb:.2f} GB in {self.hash_seconds:.1f} s{rate}, {self.from_cache} from the hash cache"
        ]
        lines += [f"  skipped {path}: {why}" for path, why in self.skipped[:20]]
        if len(self.skipped) > 20:
            lines.append(f"  ... and {len(self.skipped) - 20} more")
        return "\n".join(lines)

    def as_dict(self) -> dict:
        return {
            "files": self.files,
            "bytes_hashed": self.bytes_hashed,
            "from_cache": self.from_cache,
            "hash_seconds": round(self.hash_seconds, 2),
            "matched": [{"path": p, "version_id": v} for p, v in self.matched],
            "imported": [{"path": p, "id": i, "type": t, "base_model": b} for p, i, t, b in self.imported],
            "skipped": [{"path": p, "why": w} for p, w in self.skipped],
        }


def weight_files(roots: list[Path]) -> list[Path]:
    """Every weight file under ``roots`` (files given directly are kept), sorted, without duplicates."""
    out: set[Path] = set()
    for root in roots:
        root = Path(root).expanduser()
        if not root.exists():
            raise UserInputError(f"{root} does not exist; pass model folders such as stable-diffusion-webui/models")
        if root.is_file():
            out.add(root.resolve())
            continue
        for dirpath, _dirs, names in os.walk(root, followlinks=True):
            for name in names:
                if name.lower().endswith(WEIGHT_SUFFIXES) and not name.startswith("."):
                    out.add((Path(dirpath) / name).resolve())
    return sorted(out)


class HashCache:
    """SHA-256 of files by (path, size, mtime): a second scan of an unchanged folder reads no file."""

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            self.data = json.loads(self.path.read_text(encoding="utf-8")) if self.path.is_file() else {}
        except (ValueError, OSError):  # a damaged cache only costs a re-hash
            self.data = {}

    def get(self, file: Path, st: os.stat_result) -> str | None:
        hit = self.data.get(str(file))
        if hit and hit.get("size") == st.st_size and hit.get("mtime_ns") == st.st_mtime_ns:
            return hit.get("sha256")
        return None

    def put(self, file: Path, st: os.stat_result, sha256: str) -> None:
        self.data[str(file)] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha256}

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path, lambda tmp: tmp.write_text(json.dumps(self.data), encoding="utf-8"))


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(_CHUNK):
            h.update(block)
    return h.hexdigest()


def safetensors_header(path: Path) -> dict:
    """The JSON header of a ``.safetensors`` file (tensor names -> dtype/shape, and ``__metadata__``)."""
    with open(path, "rb") as fh:
        raw = fh.read(8)
        if len(raw) < 8:
            raise ValueError("shorter than a safetensors header")
        (n,) = struct.unpack("<Q", raw)
        if not 2 <= n <= _HEADER_MAX:
            raise ValueError(f"header length {n} is not a safetensors header's")
        return json.loads(fh.read(n))


def folder_type(path: Path) -> str | None:
    """The registry type an A1111 / ComfyUI folder name implies (the nearest matching folder wins)."""
    for part in reversed(path.parent.parts):
        if t := FOLDER_TYPES.get(part.lower()):
            return t
    return None


def describe(path: Path, header: dict) -> tuple[str | None, str | None, str]:
    """(type, Civitai-style base model, name) of an unknown file, from its header; None where it does not say."""
    meta = header.get("__metadata__") or {}
    keys = [k for k in header if k != "__metadata__"]
    flow = flow_family_of_keys(keys)  # FLUX.1 / SD 3 weights keep their makers' block names
    flat = flat_tensor_names(keys)
    kind = folder_type(path)
    if kind is None and flow and not any(".lora" in k or "lora." in k for k in flat):
        kind = "checkpoint"
    if kind is None:
        if any(k.startswith(("lora_unet_", "lora_te")) or ".lora_down." in k or ".lora_A." in k for k in keys):
            # LyCORIS (LoHa / LoKr keys, or its trainer named in the metadata) or a LoCon: low-rank 3x3 convolutions
            conv = any(
                k.endswith(".lora_down.weight") and len(header[k].get("shape", ())) == 4 and header[k]["shape"][-1] > 1
                for k in keys
            )
            lycoris = "lycoris" in str(meta.get("ss_network_module", "")).lower()
            kind = "locon" if conv or lycoris or any("hada_" in k or "lokr_" in k for k in keys) else "lora"
        elif any(k.startswith("model.diffusion_model.") for k in keys):
            kind = "checkpoint"
        elif keys and len(keys) <= 4 and any(k in ("emb_params", "clip_l", "clip_g", "string_to_param") for k in keys):
            kind = "embedding"
        elif keys and all(
            k.startswith(("encoder.", "decoder.", "quant_conv", "post_quant_conv", "first_stage_model")) for k in keys
        ):
            kind = "vae"
    arch = str(meta.get("modelspec.architecture", "")).lower()
    version = str(meta.get("ss_base_model_version", "")).lower()
    if "flux" in arch or version.startswith("flux") or flow == "flux":
        base = "Flux.1 D" if "dev" in arch or any("guidance.in" in k for k in flat) else "Flux.1 S"
    elif "stable-diffusion-v3" in arch or version.startswith("sd3") or flow == "sd3":
        base = "SD 3.5" if "3-5" in arch or "3.5" in arch or any(".ln.q." in k for k in flat) else "SD 3"
    elif "xl" in arch or version.startswith("sdxl"):
        base = "SDXL 1.0"
    elif "stable-diffusion-v1" in arch or version.startswith("sd_v1"):
        base = "SD 1.5"
    elif any(k.startswith(("conditioner.embedders.1.", "lora_te2_", "lora_te1_")) or k == "clip_g" for k in keys):
        base = "SDXL 1.0"
    elif any(k.startswith(("cond_stage_model.transformer.", "lora_te_")) for k in keys) or (
        kind == "embedding" and keys and header[keys[0]].get("shape", [0])[-1:] == [768]
    ):
        base = "SD 1.5"
    else:
        base = None
    name = str(meta.get("ss_output_name") or meta.get("modelspec.title") or path.stem)
    return kind, base, name


def local_record(path: Path, sha: str, kind: str, base: str, name: str, header: dict):
    from diffagent.registry.records import FileRecord, ModelRecord, VersionRecord

    meta = header.get("__metadata__") or {}
    trigger = str(meta.get("modelspec.trigger_phrase") or "").strip()
    ident = LOCAL_ID_BASE + int(sha[:10], 16)
    version = VersionRecord(
        id=ident,
        name=path.stem,
        base_model=base,
        local_path=str(path),
        trained_words=[trigger] if trigger else [],
        description=str(meta.get("modelspec.description") or ""),
        files=[
            FileRecord(
                id=ident,
                name=path.name,
                format="SafeTensor",
                sha256=sha.upper(),
                size_kb=path.stat().st_size / 1024,
                primary=True,
            )
        ],
    )
    return ModelRecord(
        id=ident,
        name=name,
        type=kind,
        source="local",
        tags=["local"],
        description=f"found on disk at {path}",
        versions=[version],
    )


def scan(
    registry: Location,
    roots: list[Path],
    *,
    cache_path: Path,
    import_unknown: bool = True,
    embedder=None,
    progress: bool = False,
) -> ScanReport:
    from tqdm import tqdm

    from diffagent.registry.db import open_engine
    from diffagent.registry.importer import import_records

    open_engine(registry).dispose()  # a missing registry is refused before any file is hashed
    files = weight_files(roots)
    report = ScanReport(files=len(files))
    cache = HashCache(cache_path)
    hashes: dict[Path, str] = {}
    for f in tqdm(files, desc="hashing", unit="file", disable=not progress):
        st = f.stat()
        sha = cache.get(f, st)
        if sha is None:
            t = time.perf_counter()
            sha = sha256_of(f)
            report.hash_seconds += time.perf_counter() - t
            report.bytes_hashed += st.st_size
            cache.put(f, st, sha)
        else:
            report.from_cache += 1
        hashes[f] = sha
    cache.save()

    engine = open_engine(registry)
    try:
        with engine.connect() as conn:
            by_hash = {
                str(h).lower(): int(v)
                for h, v in conn.execute(
                    text("SELECT sha256, version_id FROM model_file WHERE sha256 IS NOT NULL ORDER BY id DESC")
                )
            }
        unknown = []
        for f, sha in hashes.items():
            if sha in by_hash:
                report.matched.append((str(f), by_hash[sha]))
                continue
            if not import_unknown:
                report.skipped.append((str(f), "not in the registry (import of unknown files is off)"))
            elif f.suffix.lower() != ".safetensors":
                report.skipped.append(
                    (str(f), "a pickle not in the registry: not opened (unsafe); convert it to .safetensors to use it")
                )
            else:
                try:
                    header = safetensors_header(f)
                except (ValueError, OSError) as e:
                    report.skipped.append((str(f), f"not a readable safetensors file ({e})"))
                    continue
                kind, base, name = describe(f, header)
                if kind not in SEARCHABLE_TYPES:
                    report.skipped.append(
                        (
                            str(f),
                            "not a checkpoint, LoRA, embedding or VAE (put it in the "
                            "matching models folder if it is one)",
                        )
                    )
                elif base is None:
                    report.skipped.append((str(f), "its header names no base model (SD 1.5 or SDXL)"))
                else:
                    unknown.append(local_record(f, sha, kind, base, name, header))
                    report.imported.append((str(f), unknown[-1].id, kind, base))
        if unknown:
            import_records(registry, unknown, source="local scan", embedder=embedder, create=False)
        if report.matched:
            with engine.begin() as conn:
                conn.execute(
                    text("UPDATE model_version SET local_path = :p WHERE id = :v"),
                    [{"p": p, "v": v} for p, v in report.matched],
                )
    finally:
        engine.dispose()
    return report
