"""The curated default source: ``default_models.toml`` -> import records.

The TOML file is written by hand (see its header). Each ``[[model]]`` entry is validated with a
strict pydantic model so that a typo in the file (an unknown key, a sampler A1111 does not know,
a model with nowhere to download it from) fails loudly with the entry's position and slug, instead
of silently producing a registry row that breaks at render time.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from diffagent.errors import UserInputError
from diffagent.families import FLOW, FLOW_REFERENCES, ecosystem_of, family_of
from diffagent.registry.kinds import validate as validate_kinds
from diffagent.registry.records import FileRecord, ModelRecord, VersionRecord
from diffagent.registry.schema import synthetic_id
from diffagent.samplers import canonical_sampler

DEFAULT_PATH = Path(__file__).with_name("default_models.toml")

SOURCE = "curated"

#: Civitai ``baseModel`` strings accepted here: the SD 1.x and SDXL-architecture sets of Civitai's
#: generation constants, i.e. everything diffagent can render.
BASE_MODELS: frozenset[str] = frozenset(
    {
        "SD 1.4",
        "SD 1.5",
        "SD 1.5 LCM",
        "SD 1.5 Hyper",
        "SDXL 0.9",
        "SDXL 1.0",
        "SDXL 1.0 LCM",
        "SDXL Lightning",
        "SDXL Hyper",
        "SDXL Turbo",
        "Pony",
        "Illustrious",
        "NoobAI",
        "Flux.1 D",
        "Flux.1 S",
        "SD 3.5",
        "SD 3.5 Large",
        "SD 3.5 Large Turbo",
        "SD 3.5 Medium",
    }
)

#: Civitai's ``allowCommercialUse`` values
COMMERCIAL_USE = Literal["None", "Image", "Rent", "RentCivit", "Sell"]

_SLUG = re.compile(r"^[a-z0-9][a-z0-9.\-]*$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_HF_REPO = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")

CIVITAI_DOWNLOAD = "https://civitai.com/api/download/models/{version_id}"
HF_RESOLVE = "https://huggingface.co/{repo}/resolve/main/{file}"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class Weights(_Strict):
    """Where the weights are. Hugging Face and Civitai are alternative sources of one version."""

    hf_repo: str | None = Field(None, description="'owner/name' of a Hugging Face model repo")
    hf_file: str | None = Field(None, description="path of the file inside hf_repo (not for Diffusers)")
    civitai_model_id: int | None = Field(None, gt=0)
    civitai_version_id: int | None = Field(None, gt=0)
    filename: str | None = Field(None, description="local file name; defaults to hf_file's name")
    format: Literal["SafeTensor", "PickleTensor", "Diffusers"]
    sha256: str | None = None

    @field_validator("hf_repo")
    @classmethod
    def _repo_shape(cls, v: str | None) -> str | None:
        if v is not None and not _HF_REPO.match(v):
            raise ValueError(f"{v!r} is not a Hugging Face repo id; write it as 'owner/name'")
        return v

    @field_validator("sha256")
    @classmethod
    def _sha_shape(cls, v: str | None) -> str | None:
        if v is not None and not _SHA256.match(v.lower()):
            raise ValueError("must be 64 hex digits; leave it out when the hash is not known for certain")
        return v.lower() if v else v

    @field_validator("filename")
    @classmethod
    def _plain_name(cls, v: str | None) -> str | None:
        # a file name, never a path: it is joined to the weights folder by the fetcher
        if v is not None and (not v or "/" in v or "\\" in v or v.startswith(".")):
            raise ValueError(f"{v!r} must be a plain file name without folders")
        return v

    @model_validator(mode="after")
    def _has_location(self) -> Weights:
        if (self.civitai_model_id is None) != (self.civitai_version_id is None):
            raise ValueError("civitai_model_id and civitai_version_id go together; give both or neither")
        if self.hf_repo is None and self.civitai_version_id is None:
            raise ValueError("no weight location: give hf_repo (+ hf_file) or civitai_model_id + civitai_version_id")
        if self.hf_file is not None and self.hf_repo is None:
            raise ValueError("hf_file needs hf_repo")
        if self.format == "Diffusers":
            if self.hf_repo is None:
                raise ValueError("format 'Diffusers' is a Hugging Face folder; give hf_repo")
            if self.hf_file is not None:
                raise ValueError("format 'Diffusers' is a whole repo folder; drop hf_file or change the format")
        elif self.hf_repo is not None and self.hf_file is None:
            raise ValueError(f"format {self.format!r} is a single file; give hf_file inside {self.hf_repo}")
        if self.format != "Diffusers" and self.local_name is None:
            raise ValueError("a Civitai-only single file needs filename")
        return self

    @property
    def local_name(self) -> str | None:
        if self.filename:
            return self.filename
        if self.hf_file:
            return PurePosixPath(self.hf_file).name
        if self.format == "Diffusers" and self.hf_repo:
            return self.hf_repo.split("/", 1)[1]
        return None

    @property
    def civitai_url(self) -> str | None:
        if self.civitai_version_id is None:
            return None
        return CIVITAI_DOWNLOAD.format(version_id=self.civitai_version_id)

    @property
    def hf_url(self) -> str | None:
        if self.hf_repo is None or self.hf_file is None:
            return None
        return HF_RESOLVE.format(repo=self.hf_repo, file=self.hf_file)


class Recommended(_Strict):
    """Creator-recommended settings (``VersionRecord.recommended`` keys)."""

    sampler: str | None = Field(None, description="A1111 sampler name")
    steps: int | None = Field(None, ge=1, le=150)
    cfg_scale: float | None = Field(None, ge=0, le=30)
    width: int | None = Field(None, ge=256, le=2048, multiple_of=8)
    height: int | None = Field(None, ge=256, le=2048, multiple_of=8)
    clip_skip: int | None = Field(None, ge=1, le=12)
    negative_prompt: str | None = None
    weight: float | None = Field(None, ge=-5, le=5, description="LoRA strength")

    @field_validator("sampler")
    @classmethod
    def _known_sampler(cls, v: str | None) -> str | None:
        if v is None:
            return v
        name = canonical_sampler(v)
        if name is None:
            raise ValueError(
                f"unknown sampler {v!r}; use an A1111 name such as 'Euler a', 'DPM++ 2M Karras' "
                "(see diffagent.samplers.A1111_SAMPLERS)"
            )
        return name


class Entry(_Strict):
    """One ``[[model]]`` table of the curated file."""

    slug: str
    name: str = Field(min_length=1)
    version: str = Field(min_length=1, description="version name, e.g. 'v1.8.1'")
    type: Literal["checkpoint", "lora", "locon", "embedding", "vae"]
    base_model: str
    creator: str | None = None
    tags: list[str] = Field(default_factory=list)
    description: str = Field(min_length=1)
    trigger_words: list[str] = Field(default_factory=list)
    kinds: list[str] = Field(default_factory=list, description="checkpoint kinds / LoRA role (registry/kinds.py)")
    concepts: list[str] = Field(default_factory=list, description="phrases a request uses to ask for a LoRA")
    nsfw: bool = False
    license: str | None = None
    allow_commercial_use: COMMERCIAL_USE | None = None
    allow_derivatives: bool | None = None
    allow_no_credit: bool | None = None
    allow_different_license: bool | None = None
    downloads: int = Field(0, ge=0, description="approximate; an ordering prior only")
    weights: Weights
    recommended: Recommended = Field(default_factory=Recommended)

    @field_validator("slug")
    @classmethod
    def _slug_shape(cls, v: str) -> str:
        if not _SLUG.match(v):
            raise ValueError(f"{v!r} is not a slug; use lowercase letters, digits, '-' and '.'")
        return v

    @field_validator("base_model")
    @classmethod
    def _renderable_base(cls, v: str) -> str:
        if v not in BASE_MODELS:
            raise ValueError(f"unknown base model {v!r}; use one of: {', '.join(sorted(BASE_MODELS))}")
        return v

    @field_validator("tags", "trigger_words")
    @classmethod
    def _no_blank_items(cls, v: list[str]) -> list[str]:
        if any(not item.strip() for item in v):
            raise ValueError("contains an empty string")
        return [item.strip() for item in v]

    @model_validator(mode="after")
    def _type_rules(self) -> Entry:
        if self.type in ("checkpoint", "lora", "locon") or self.kinds or self.concepts:
            validate_kinds(self.type, self.kinds, self.concepts)
        if self.type == "embedding" and not self.trigger_words:
            raise ValueError("an embedding needs its prompt token in trigger_words")
        if self.recommended.weight is not None and self.type not in ("lora", "locon"):
            raise ValueError("recommended.weight is a LoRA strength; only lora/locon entries take it")
        eco = ecosystem_of(family_of(self.base_model))
        if eco in FLOW:
            if self.type in ("embedding", "vae"):
                raise ValueError(f"FLUX.1 and SD 3.5 take no {self.type}s (their text encoders and VAE are their own)")
            references = set(FLOW_REFERENCES[eco].values())
            if self.slug in references and self.weights.format != "Diffusers":
                raise ValueError(
                    f"{self.slug} is the reference model whose folder completes {eco} transformer files "
                    "(encoders, VAE): give format 'Diffusers' and the Hugging Face repo"
                )
            if self.type == "checkpoint" and self.weights.format not in ("Diffusers", "SafeTensor"):
                raise ValueError(
                    "a FLUX.1 / SD 3.5 checkpoint is a diffusers folder (format 'Diffusers') or a "
                    ".safetensors transformer file (format 'SafeTensor')"
                )
        return self


def _field_path(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc) or "(entry)"


def _message(err: Any) -> str:
    if err["type"] == "extra_forbidden":
        return "unknown key; remove it or fix its spelling (see the file header for the keys)"
    return str(err["msg"]).removeprefix("Value error, ")


def _entry_label(index: int, raw: Any) -> str:
    slug = raw.get("slug") if isinstance(raw, dict) else None
    return f"entry {index + 1}" + (f" (slug {slug!r})" if slug else "")


def _validate(raw: Any, index: int, path: Path) -> Entry:
    label = _entry_label(index, raw)
    if not isinstance(raw, dict):
        raise UserInputError(f"{path.name}: {label} is not a table; write each model as a [[model]] table")
    try:
        return Entry.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"field '{_field_path(e['loc'])}': {_message(e)}" for e in exc.errors())
        raise UserInputError(f"{path.name}: {label}: {problems}") from None


def _to_record(e: Entry) -> ModelRecord:
    w = e.weights
    model_id = w.civitai_model_id or synthetic_id(e.slug)
    version_id = w.civitai_version_id or synthetic_id(e.slug + "@version")
    # a single-file download URL: Civitai's when known, else the Hugging Face resolve URL
    url = w.civitai_url or w.hf_url
    description = e.description + (f" Licence: {e.license}." if e.license else "")
    file = FileRecord(
        id=synthetic_id(e.slug + "#file"),
        name=w.local_name or e.slug,
        format=w.format,
        sha256=w.sha256,
        download_url=url,
        primary=True,
    )
    version = VersionRecord(
        id=version_id,
        name=e.version,
        base_model=e.base_model,
        trained_words=list(e.trigger_words),
        downloads=e.downloads,
        hf_repo=w.hf_repo,
        hf_file=w.hf_file,
        download_url=url,
        recommended=e.recommended.model_dump(exclude_none=True),
        kinds=list(e.kinds) if e.type in ("checkpoint", "lora", "locon") else None,
        concepts=list(e.concepts),
        files=[file],
    )
    return ModelRecord(
        id=model_id,
        name=e.name,
        type=e.type,
        source=SOURCE,
        slug=e.slug,
        description=description,
        creator=e.creator,
        nsfw=e.nsfw,
        allow_commercial_use=e.allow_commercial_use,
        allow_derivatives=e.allow_derivatives,
        allow_no_credit=e.allow_no_credit,
        allow_different_license=e.allow_different_license,
        downloads=e.downloads,
        tags=list(e.tags),
        versions=[version],
    )


def _check_unique(entries: list[Entry], records: list[ModelRecord], path: Path) -> None:
    """Slugs and version ids must be unique; model ids may repeat only for versions of one Civitai model."""
    seen_slug: dict[str, int] = {}
    seen_version: dict[int, str] = {}
    seen_file: dict[int, str] = {}
    model_owner: dict[int, tuple[str, str]] = {}
    for i, (e, r) in enumerate(zip(entries, records)):
        label = _entry_label(i, {"slug": e.slug})
        if e.slug in seen_slug:
            raise UserInputError(
                f"{path.name}: {label}: field 'slug': duplicate of entry {seen_slug[e.slug] + 1}; slugs must be unique"
            )
        seen_slug[e.slug] = i
        v = r.versions[0]
        if v.id in seen_version:
            raise UserInputError(
                f"{path.name}: {label}: field 'weights.civitai_version_id': version id {v.id} is already used by "
                f"slug {seen_version[v.id]!r}"
            )
        seen_version[v.id] = e.slug
        f = v.files[0]
        if f.id in seen_file:
            raise UserInputError(
                f"{path.name}: {label}: field 'slug': its synthetic file id collides with slug {seen_file[f.id]!r}; "
                "choose another slug"
            )
        seen_file[f.id] = e.slug
        # two curated versions of one Civitai model page must agree on what the page is
        owner = model_owner.setdefault(r.id, (e.name, e.type))
        if owner != (e.name, e.type):
            raise UserInputError(
                f"{path.name}: {label}: field 'weights.civitai_model_id': model id {r.id} is already used by a "
                f"model named {owner[0]!r} of type {owner[1]!r}"
            )


def load_default_source(path: str | Path | None = None) -> list[ModelRecord]:
    """Parse and validate the curated TOML (default: the shipped ``default_models.toml``).

    Entries that are versions of the same Civitai model page become versions of one ``ModelRecord``.
    Raises ``UserInputError`` naming the entry and field for anything malformed.
    """
    p = Path(path) if path is not None else DEFAULT_PATH
    try:
        with p.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise UserInputError(f"curated model file {p} does not exist; pass the path of a default_models.toml") from None
    except tomllib.TOMLDecodeError as exc:
        raise UserInputError(f"{p.name} is not valid TOML: {exc}") from None

    unknown = set(data) - {"model"}
    if unknown:
        raise UserInputError(
            f"{p.name}: unknown top-level key(s) {sorted(unknown)}; the file holds only [[model]] tables"
        )
    raw_entries = data.get("model", [])
    if not isinstance(raw_entries, list) or not raw_entries:
        raise UserInputError(f"{p.name}: no [[model]] tables found")

    entries = [_validate(raw, i, p) for i, raw in enumerate(raw_entries)]
    records = [_to_record(e) for e in entries]
    _check_unique(entries, records, p)
    return _merge_pages(records)


def _merge_pages(records: list[ModelRecord]) -> list[ModelRecord]:
    """Fold entries sharing a model id (versions of one Civitai page) into one record, in file order.

    The page keeps the first entry's slug, name and description (the registry has one slug per
    model); later entries survive as versions, reachable by their version ids.
    """
    by_id: dict[int, ModelRecord] = {}
    for r in records:
        first = by_id.get(r.id)
        if first is None:
            by_id[r.id] = r
            continue
        first.versions.extend(r.versions)
        first.downloads = max(first.downloads, r.downloads)
        first.tags = list(dict.fromkeys(first.tags + r.tags))
    return list(by_id.values())
