"""The trainable model: the GGUF base as a transformers model, with a peft LoRA on top.

transformers can read the GGUF (dequantized to fp32) but that takes 1.5-2 minutes on two cores,
so it is done once and saved as an ordinary HF folder under the work dir (5 s to reload).

``answer_logprobs`` is the one forward pass every loss uses. It computes the vocabulary head only
at the positions that predict answer tokens: with Gemma's 262k-token head, logits for all ~650
prompt positions would cost more than the rest of the network.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from diffagent.errors import MissingDependency, UserInputError
from diffagent.training.config import LoraShape
from diffagent.training.io import replace_dir

log = logging.getLogger(__name__)


def require_torch():
    try:
        import peft  # noqa: F401
        import torch
        import transformers  # noqa: F401
    except ImportError as e:
        raise MissingDependency(e.name or "transformers", "train") from e
    return torch


def ensure_hf_base(gguf_path: Path, hf_dir: Path) -> Path:
    """The HF folder (fp32 weights + config) made from ``gguf_path``; converted once, then reused."""
    hf_dir = Path(hf_dir)
    if (hf_dir / "config.json").is_file() and any(hf_dir.glob("*.safetensors")):
        return hf_dir
    torch = require_torch()
    from transformers import AutoModelForCausalLM

    gguf_path = Path(gguf_path)
    if not gguf_path.is_file():
        raise UserInputError(f"base GGUF {gguf_path} not found")
    log.warning("converting %s to a transformers model (once; 1-3 minutes)", gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32)
    # the GGUF loader marks the model as quantized, which save_pretrained refuses; the weights are
    # plain fp32 after dequantization, so the marker is dropped
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    replace_dir(hf_dir, lambda tmp: model.save_pretrained(tmp))
    return hf_dir


def load_base(hf_dir: Path, device: str = "cpu"):
    """The fp32 base model on ``device`` ('cpu', or 'cuda' on a GPU machine; the stages check it up front with
    ``check_device``, in ``pipeline._setup_torch``)."""
    torch = require_torch()
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32)
    model.config.use_cache = False
    return model.to(device)


def check_device(device: str) -> None:
    """A clear error for a device this machine lacks, before minutes of loading."""
    torch = require_torch()
    try:
        kind = torch.device(device).type
    except RuntimeError as e:
        raise UserInputError(f"--device {device!r} is not a torch device ({e}); use cpu or cuda") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise UserInputError(f"--device {device}: this machine has no CUDA GPU (torch sees none); use --device cpu")


def device_of(model):
    """The device the model's weights are on (every tensor a loss builds goes there)."""
    return next(model.parameters()).device


def add_lora(model, shape: LoraShape):
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(
        r=shape.r,
        lora_alpha=shape.alpha,
        lora_dropout=shape.dropout,
        target_modules=list(shape.target_modules),
        layers_to_transform=shape.layers,
        task_type="CAUSAL_LM",
        bias="none",
    )
    return get_peft_model(model, cfg)


def load_lora(model, adapter_dir: Path, *, trainable: bool):
    from peft import PeftModel

    if not (Path(adapter_dir) / "adapter_config.json").is_file():
        raise UserInputError(
            f"{adapter_dir} is not a peft adapter folder (no adapter_config.json); "
            "train it first with `diffagent train sft`"
        )
    return PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=trainable)


@dataclass
class Batch:
    """Right-padded sequences ``prompt + answer[:-1]`` and where each answer token is predicted."""

    input_ids: object  # LongTensor [B, L]
    attention_mask: object  # LongTensor [B, L]
    keep: object  # LongTensor [K]: positions whose logits are computed (union over rows)
    gather: object  # LongTensor [B, A]: index into ``keep`` of the position predicting answer token a
    targets: object  # LongTensor [B, A]
    mask: object  # FloatTensor [B, A]: 1 for real answer tokens

    @property
    def lengths(self):
        return self.mask.sum(dim=1)

    def to(self, device) -> Batch:
        return Batch(*(getattr(self, f).to(device) for f in self.__dataclass_fields__))


def make_batch(seqs: list[tuple[list[int], list[int]]], pad_id: int = 0) -> Batch:
    """``seqs``: (prompt ids, answer ids) pairs. Right padding: no real token ever attends to a pad."""
    torch = require_torch()
    if not seqs or any(not a for _, a in seqs):
        raise ValueError("every sequence needs at least one answer token")
    inputs = [p + a[:-1] for p, a in seqs]
    L = max(len(x) for x in inputs)
    A = max(len(a) for _, a in seqs)
    positions = sorted({len(p) - 1 + t for p, a in seqs for t in range(len(a))})
    where = {pos: k for k, pos in enumerate(positions)}
    ids = torch.full((len(seqs), L), pad_id, dtype=torch.long)
    att = torch.zeros((len(seqs), L), dtype=torch.long)
    gather = torch.zeros((len(seqs), A), dtype=torch.long)
    targets = torch.zeros((len(seqs), A), dtype=torch.long)
    mask = torch.zeros((len(seqs), A), dtype=torch.float32)
    for i, ((p, a), x) in enumerate(zip(seqs, inputs, strict=True)):
        ids[i, : len(x)] = torch.tensor(x)
        att[i, : len(x)] = 1
        for t, tok in enumerate(a):
            gather[i, t] = where[len(p) - 1 + t]
            targets[i, t] = tok
            mask[i, t] = 1.0
    return Batch(ids, att, torch.tensor(positions, dtype=torch.long), gather, targets, mask)


def answer_logprobs(model, batch: Batch, *, bf16: bool = False):
    """Per-token log-probabilities [B, A] of the answer tokens (0 where masked), full-vocabulary softmax, on the
    model's device (the batch is moved there)."""
    torch = require_torch()
    device = device_of(model)
    if batch.input_ids.device != device:
        batch = batch.to(device)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        out = model(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask, logits_to_keep=batch.keep, use_cache=False
        )
    logits = out.logits.float()  # [B, K, V]
    rows = torch.arange(logits.shape[0], device=device).unsqueeze(1)
    picked = logits[rows, batch.gather]  # [B, A, V]
    lp = torch.log_softmax(picked, dim=-1).gather(-1, batch.targets.unsqueeze(-1)).squeeze(-1)
    return lp * batch.mask
