"""The optimizer loop both stages share: seeded order, gradient accumulation, warmup + linear decay,
resumable checkpoints, a progress bar.

The order of work is a pure function of the seed (one seeded permutation of the units per epoch),
and step ``s`` consumes units ``s*accum .. (s+1)*accum-1`` of that stream, so a resumed run needs
only the step number to carry on exactly where the killed one stopped.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from diffagent.training.io import replace_dir, resolve_dir, write_json_atomic

log = logging.getLogger(__name__)


class LoopSettings(BaseModel):
    epochs: int = 1
    max_steps: int | None = None
    grad_accum: int = 1
    lr: float = 1e-3
    warmup_steps: int = 0
    weight_decay: float = 0.0
    checkpoint_every: int = 10
    seed: int = 0


class LoopState(BaseModel):
    step: int = 0
    total_steps: int = 0
    seconds: float = 0.0  # training time, summed over resumed runs
    losses: list[float] = Field(default_factory=list)  # one per optimizer step
    extras: dict[str, list[float]] = Field(default_factory=dict)  # named parts of the loss, per step


def unit_stream(n_units: int, epochs: int, seed: int) -> list[int]:
    out: list[int] = []
    for epoch in range(epochs):
        order = list(range(n_units))
        random.Random(seed * 1_000_003 + epoch).shuffle(order)
        out += order
    return out


def _save_checkpoint(path: Path, model, optimizer, scheduler, state: LoopState) -> None:
    import torch

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp / "optim.pt")
        (tmp / "state.json").write_text(state.model_dump_json(), encoding="utf-8")

    replace_dir(path, write)


def _load_checkpoint(path: Path, model, optimizer, scheduler) -> LoopState:
    import torch
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    set_peft_model_state_dict(model, load_file(path / "adapter_model.safetensors"))
    opt = torch.load(path / "optim.pt", weights_only=True)
    optimizer.load_state_dict(opt["optimizer"])
    scheduler.load_state_dict(opt["scheduler"])
    return LoopState.model_validate_json((path / "state.json").read_text(encoding="utf-8"))


def train_loop(
    model,
    units: Sequence[Any],
    loss_fn: Callable[[Any, Any], tuple[Any, dict[str, float]]],
    out_dir: Path,
    cfg: LoopSettings,
    *,
    progress: bool = True,
    desc: str = "train",
) -> LoopState:
    """Train the trainable parameters of ``model`` (a peft model) on ``units``.

    ``loss_fn(model, unit) -> (loss tensor, {part: value})``. Checkpoints go to
    ``out_dir/checkpoint`` every ``cfg.checkpoint_every`` steps; the final adapter to
    ``out_dir/adapter`` and the loss curve to ``out_dir/metrics.json``. A run that finds a checkpoint
    resumes from it; one that finds a finished state returns at once.
    """
    import torch
    from tqdm import tqdm

    out_dir = Path(out_dir)
    if not units:
        raise ValueError("nothing to train on")
    stream = unit_stream(len(units), cfg.epochs, cfg.seed)
    total = math.ceil(len(stream) / cfg.grad_accum)
    if cfg.max_steps:
        total = min(total, cfg.max_steps)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)

    def schedule(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / (cfg.warmup_steps + 1)
        return max(0.0, (total - step) / max(1, total - cfg.warmup_steps))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    state = LoopState(total_steps=total)
    ckpt = resolve_dir(out_dir / "checkpoint")
    if ckpt is not None and (ckpt / "state.json").is_file():
        state = _load_checkpoint(ckpt, model, optimizer, scheduler)
        if state.total_steps != total:
            log.warning(
                "checkpoint planned %d steps, this config plans %d; continuing to %d", state.total_steps, total, total
            )
            state.total_steps = total
        log.info("resuming %s at step %d/%d", desc, state.step, total)
    model.train()
    bar = tqdm(total=total, initial=state.step, desc=desc, disable=not progress, dynamic_ncols=True)
    while state.step < total:
        t0 = time.perf_counter()
        torch.manual_seed(cfg.seed * 7919 + state.step)  # dropout noise depends on the step, not the run
        chunk = stream[state.step * cfg.grad_accum : (state.step + 1) * cfg.grad_accum]
        step_loss = 0.0
        parts: dict[str, float] = {}
        for i in chunk:
            loss, extra = loss_fn(model, units[i])
            (loss / len(chunk)).backward()
            step_loss += float(loss.detach()) / len(chunk)
            for k, v in extra.items():
                parts[k] = parts.get(k, 0.0) + v / len(chunk)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        state.step += 1
        state.losses.append(round(step_loss, 5))
        for k, v in parts.items():
            state.extras.setdefault(k, []).append(round(v, 5))
        state.seconds += time.perf_counter() - t0
        bar.update(1)
        bar.set_postfix(loss=f"{step_loss:.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
        if state.step % cfg.checkpoint_every == 0 or state.step == total:
            _save_checkpoint(out_dir / "checkpoint", model, optimizer, scheduler, state)
    bar.close()
    replace_dir(out_dir / "adapter", lambda tmp: model.save_pretrained(tmp))
    write_json_atomic(out_dir / "metrics.json", json.loads(state.model_dump_json()))
    return state
