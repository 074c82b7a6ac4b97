"""The stages end to end, on one work dir: data -> sft -> rrhf -> export.

    <work_dir>/base_hf/                 the base GGUF as a transformers folder (made once)
    <work_dir>/data/examples.jsonl      training examples (resumable)
    <work_dir>/sft/{checkpoint,adapter}/, report.json, adapter.gguf
    <work_dir>/rrhf/candidates.jsonl    scored candidates (resumable)
    <work_dir>/rrhf/{checkpoint,adapter}/, report.json, adapter.gguf

Every stage resumes from what a killed run left, and a finished stage is not redone.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from diffagent.errors import UserInputError
from diffagent.registry.location import is_url, parse_location
from diffagent.settings import Settings
from diffagent.training.config import TrainConfig
from diffagent.training.io import write_json_atomic


@dataclass(frozen=True)
class Layout:
    root: Path

    @property
    def base_hf(self) -> Path:
        return self.root / "base_hf"

    @property
    def examples(self) -> Path:
        return self.root / "data" / "examples.jsonl"

    def stage(self, name: str) -> Path:
        if name not in ("sft", "rrhf"):
            raise UserInputError(f"unknown stage {name!r}; use sft or rrhf")
        return self.root / name

    def adapter(self, name: str) -> Path:
        return self.stage(name) / "adapter"

    def gguf(self, name: str) -> Path:
        return self.stage(name) / "adapter.gguf"

    @property
    def candidates(self) -> Path:
        return self.root / "rrhf" / "candidates.jsonl"


def layout(cfg: TrainConfig, settings: Settings) -> Layout:
    return Layout(Path(cfg.work_dir) if cfg.work_dir else settings.data_dir / "training")


def base_gguf(cfg: TrainConfig, settings: Settings) -> Path:
    if cfg.base_model:
        return Path(cfg.base_model)
    if settings.llm_model:
        return Path(settings.llm_model)
    from diffagent.agent.llm import default_model_path

    return default_model_path()


def _registry(cfg: TrainConfig, settings: Settings):
    from diffagent.registry.store import Registry

    path = parse_location(cfg.registry) if cfg.registry else settings.registry
    if not is_url(path) and not Path(path).is_file():  # a database URL is checked by opening it, below
        raise UserInputError(f"registry {path} not found; set registry in the config or pass --registry")
    # opened as `bench select` and the runtime open it, so retrieval sees the same models
    return Registry.from_settings(settings, path)


def _setup_torch(cfg: TrainConfig):
    from diffagent.training.model import check_device, require_torch

    torch = require_torch()
    check_device(cfg.device)  # before minutes of conversion and loading
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    return torch


def run_data(cfg: TrainConfig, settings: Settings, *, progress: bool = True) -> dict:
    from diffagent.training.data import build_examples

    if cfg.data.pairs is None:
        raise UserInputError(
            "no pairs file: set data.pairs in the config or pass --pairs (build pairs with `diffagent bench build`)"
        )
    lay = layout(cfg, settings)
    report = build_examples(
        cfg.data.pairs,
        _registry(cfg, settings),
        lay.examples,
        split=cfg.data.split,
        limit=cfg.data.limit,
        seed=cfg.seed,
        dedupe=cfg.data.dedupe_instructions,
        candidates_k=cfg.candidates_k or settings.candidates_k,
        max_loras=cfg.data.max_loras,
        leave_page_out=cfg.data.leave_page_out,
        ranker=settings.ranker,
        card_adapter=settings.card_adapter,
        progress=progress,
    )
    out = {"examples_file": str(lay.examples), **report.model_dump()}
    write_json_atomic(lay.examples.with_name("report.json"), out)
    return out


def _examples(lay: Layout, cfg: TrainConfig):
    from diffagent.training.data import load_examples

    return load_examples(lay.examples)[: cfg.data.limit]


def run_sft(cfg: TrainConfig, settings: Settings, *, progress: bool = True) -> dict:
    from diffagent.training.model import add_lora, ensure_hf_base, load_base
    from diffagent.training.sft import train_sft
    from diffagent.training.tokens import GGUFTokenizer

    _setup_torch(cfg)
    lay = layout(cfg, settings)
    examples = _examples(lay, cfg)
    if cfg.sft.shuffle_candidates:
        from diffagent.training.data import shuffle_candidates

        examples = shuffle_candidates(
            examples, _registry(cfg, settings), share=cfg.sft.shuffle_candidates, seed=cfg.seed
        )
    gguf = base_gguf(cfg, settings)
    model = add_lora(load_base(ensure_hf_base(gguf, lay.base_hf), cfg.device), cfg.lora)
    report = train_sft(model, GGUFTokenizer(gguf), examples, cfg, lay.stage("sft"), progress=progress)
    out = {"stage": "sft", "base_model": str(gguf), "config": json.loads(cfg.model_dump_json()), **report.model_dump()}
    write_json_atomic(lay.stage("sft") / "report.json", out)
    return out


def run_export(
    cfg: TrainConfig, settings: Settings, stage: str, *, out: Path | None = None, merged: bool = False
) -> dict:
    from diffagent.training.export import converter_dir, export_adapter, export_model, logit_shift, merge_adapter
    from diffagent.training.tokens import GGUFTokenizer

    lay = layout(cfg, settings)
    adapter = lay.adapter(stage)
    if not (adapter / "adapter_config.json").is_file():
        raise UserInputError(f"no {stage} adapter in {adapter}; run `diffagent train {stage}` first")
    gguf = base_gguf(cfg, settings)
    conv = converter_dir(settings.cache_dir, cfg.export.llama_cpp_version, allow_download=settings.allow_downloads)
    if merged:
        target = out or lay.stage(stage) / "merged.gguf"
        merged_dir = merge_adapter(lay.base_hf, adapter, lay.stage(stage) / "merged_hf")
        export_model(merged_dir, target, converter=conv, outtype=cfg.export.outtype)
        return {"stage": stage, "model": str(target), "bytes": target.stat().st_size}
    target = out or lay.gguf(stage)
    export_adapter(adapter, lay.base_hf, target, converter=conv, outtype=cfg.export.outtype)
    probe = GGUFTokenizer(gguf).encode('### Request\n"a watercolor fox"\n### Answer\nCheckpoint:', bos=True)
    return {
        "stage": stage,
        "adapter": str(target),
        "bytes": target.stat().st_size,
        "outtype": cfg.export.outtype,
        "max_logit_shift": round(logit_shift(gguf, target, probe), 4),
    }


def run_rrhf(cfg: TrainConfig, settings: Settings, *, progress: bool = True) -> dict:
    from diffagent.agent.llm import LlamaBackend
    from diffagent.training.model import ensure_hf_base, load_base, load_lora
    from diffagent.training.reward import ImageMetricReward
    from diffagent.training.rrhf import Rebuilder, generate_candidates, train_rrhf
    from diffagent.training.tokens import GGUFTokenizer

    _setup_torch(cfg)
    lay = layout(cfg, settings)
    sft_adapter = lay.adapter("sft")
    if not (sft_adapter / "adapter_config.json").is_file():
        raise UserInputError(
            f"RRHF starts from the SFT adapter, and {sft_adapter} has none; run `diffagent train sft` first"
        )
    examples = _examples(lay, cfg)
    gguf = base_gguf(cfg, settings)
    tok = GGUFTokenizer(gguf)
    registry = _registry(cfg, settings)
    if not lay.gguf("sft").is_file():
        run_export(cfg, settings, "sft")
    # candidates come from the SFT model as deployed: llama.cpp with the exported adapter
    backend = LlamaBackend(gguf, lora_path=lay.gguf("sft"), n_ctx=settings.llm_ctx, n_threads=cfg.threads)
    image_reward = ImageMetricReward.from_settings(settings, registry) if cfg.rrhf.reward == "image" else None
    candidates = generate_candidates(
        examples,
        tok,
        backend.logits,
        Rebuilder(registry),
        cfg,
        lay.candidates,
        image_reward=image_reward,
        progress=progress,
    )
    del backend
    model = load_lora(load_base(ensure_hf_base(gguf, lay.base_hf), cfg.device), sft_adapter, trainable=True)
    report = train_rrhf(model, tok, examples, candidates, cfg, lay.stage("rrhf"), progress=progress)
    out = {"stage": "rrhf", "base_model": str(gguf), "config": json.loads(cfg.model_dump_json()), **report.model_dump()}
    write_json_atomic(lay.stage("rrhf") / "report.json", out)
    return out


def run_eval(
    cfg: TrainConfig,
    settings: Settings,
    model: str,
    *,
    split: str = "test",
    limit: int = 300,
    shuffle: float = 0.0,
    progress: bool = True,
) -> dict:
    """Greedy choice of ``model`` (base, sft, rrhf) on ``limit`` pairs of a held-out split; ``shuffle``
    shows that share of them with their candidates in a random order (1.0: the position-free probe)."""
    from diffagent.agent.llm import LlamaBackend
    from diffagent.training.data import build_examples, load_examples
    from diffagent.training.evaluate import evaluate_choices
    from diffagent.training.rrhf import Rebuilder
    from diffagent.training.tokens import GGUFTokenizer

    if cfg.data.pairs is None:
        raise UserInputError("no pairs file: set data.pairs in the config or pass --pairs")
    if split == "train":
        raise UserInputError("evaluate on a held-out split (val or test), not on train")
    if not 0.0 <= shuffle <= 1.0:
        raise UserInputError(
            f"shuffle is the share of examples shown in a random order, between 0 and 1 (got {shuffle})"
        )
    lay = layout(cfg, settings)
    registry = _registry(cfg, settings)
    held_out = lay.examples.with_name(f"examples-{split}.jsonl")
    data = build_examples(
        cfg.data.pairs,
        registry,
        held_out,
        split=split,
        limit=limit,
        seed=cfg.seed,
        dedupe=cfg.data.dedupe_instructions,
        candidates_k=cfg.candidates_k or settings.candidates_k,
        max_loras=cfg.data.max_loras,
        leave_page_out=cfg.data.leave_page_out,
        ranker=settings.ranker,
        card_adapter=settings.card_adapter,
        progress=progress,
    )
    lora = None
    if model != "base":
        lora = lay.gguf(model)
        if not lora.is_file():
            raise UserInputError(f"{lora} not found; run `diffagent train export --stage {model}` first")
    gguf = base_gguf(cfg, settings)
    backend = LlamaBackend(gguf, lora_path=lora, n_ctx=settings.llm_ctx, n_threads=cfg.threads)
    examples = load_examples(held_out)[:limit]
    if shuffle:
        from diffagent.training.data import shuffle_candidates

        examples = shuffle_candidates(examples, registry, share=shuffle, seed=cfg.seed + 1)
    report = evaluate_choices(
        model,
        examples,
        GGUFTokenizer(gguf),
        backend.logits,
        Rebuilder(registry),
        max_loras=cfg.data.max_loras,
        progress=progress,
    )
    out = {
        "split": split,
        "pairs": data.pairs,
        "checkpoint_recall": data.checkpoint_recall,
        "adapter": str(lora) if lora else None,
        "shuffled": shuffle,
        **report.model_dump(),
    }
    suffix = f"-shuffled{shuffle:g}" if shuffle else ""
    write_json_atomic(lay.root / "eval" / f"{model}-{split}{suffix}.json", out)
    return out
