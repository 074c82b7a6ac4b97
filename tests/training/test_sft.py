"""SFT on a tiny random Gemma 3: the loss falls on a toy set; runs are seeded and resume exactly."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")

from tiny_llm import tiny_gemma, toy_examples  # noqa: E402

from diffagent.errors import UserInputError  # noqa: E402
from diffagent.training.config import LoraShape, SFTConfig, TrainConfig  # noqa: E402
from diffagent.training.loop import LoopSettings, train_loop  # noqa: E402
from diffagent.training.losses import sft_loss  # noqa: E402
from diffagent.training.model import add_lora, answer_logprobs, make_batch  # noqa: E402
from diffagent.training.sft import encode, train_sft  # noqa: E402


def _mean_loss(model, seqs) -> float:
    model.eval()
    with torch.no_grad():
        b = make_batch(seqs)
        return float(sft_loss(answer_logprobs(model, b), b.mask))


def _cfg(**sft) -> TrainConfig:
    base = {"batch_size": 2, "grad_accum": 1, "lr": 5e-2, "warmup_steps": 0, "epochs": 6, "checkpoint_every": 5}
    return TrainConfig(seed=3, lora=LoraShape(r=4, alpha=8), sft=SFTConfig(**{**base, **sft}))


def test_sft_loss_decreases_on_a_toy_set(tmp_path, toy_tok):
    examples = toy_examples(6)
    seqs, too_long = encode(toy_tok, examples, max_len=512)
    assert len(seqs) == 6 and too_long == 0
    model = add_lora(tiny_gemma(), LoraShape(r=4, alpha=8))
    before = _mean_loss(model, seqs)
    report = train_sft(model, toy_tok, examples, _cfg(), tmp_path, progress=False)
    after = _mean_loss(model, seqs)
    assert report.steps == 18 and report.examples == 6
    assert after < 0.5 * before, (before, after)
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert len(metrics["losses"]) == 18
    # only the LoRA weights were trained
    assert all(("lora_" in n) == p.requires_grad for n, p in model.named_parameters())


def test_examples_over_max_len_are_skipped_not_truncated(toy_tok, tmp_path):
    examples = toy_examples(3)
    seqs, too_long = encode(toy_tok, examples, max_len=20)
    assert seqs == [] and too_long == 3
    with pytest.raises(UserInputError, match="max_len"):
        train_sft(add_lora(tiny_gemma(), LoraShape(r=2)), toy_tok, examples, _cfg(max_len=20), tmp_path, progress=False)


class _Killed(Exception):
    pass


def test_a_killed_run_resumes_to_the_same_result_as_an_uninterrupted_one(tmp_path, toy_tok):
    seqs, _ = encode(toy_tok, toy_examples(6), max_len=512)
    units = [[s] for s in seqs]
    loop = LoopSettings(epochs=2, grad_accum=2, lr=1e-2, checkpoint_every=2, seed=5)

    def loss_fn(model, unit):
        b = make_batch(unit)
        return sft_loss(answer_logprobs(model, b), b.mask), {}

    straight = train_loop(add_lora(tiny_gemma(), LoraShape(r=4)), units, loss_fn, tmp_path / "a", loop, progress=False)
    calls = {"n": 0}

    def dying(model, unit):
        calls["n"] += 1
        if calls["n"] == 9:  # mid step 5, after the checkpoint at step 4
            raise _Killed
        return loss_fn(model, unit)

    with pytest.raises(_Killed):
        train_loop(add_lora(tiny_gemma(), LoraShape(r=4)), units, dying, tmp_path / "b", loop, progress=False)
    assert json.loads((tmp_path / "b" / "checkpoint" / "state.json").read_text())["step"] == 4
    resumed = train_loop(add_lora(tiny_gemma(), LoraShape(r=4)), units, loss_fn, tmp_path / "b", loop, progress=False)
    assert straight.step == resumed.step == 6
    assert resumed.losses == pytest.approx(straight.losses, rel=1e-4)
    # a finished run is not redone
    again = train_loop(add_lora(tiny_gemma(), LoraShape(r=4)), units, dying, tmp_path / "b", loop, progress=False)
    assert again.losses == resumed.losses


def test_a_batch_moves_whole_and_logprobs_land_on_the_models_device(toy_tok):
    """Every tensor of a batch moves with ``Batch.to``, and ``answer_logprobs`` moves a batch built elsewhere to the
    model's device (on a GPU machine: a CPU-built batch and a CUDA model)."""
    from diffagent.training.model import device_of

    seqs, _ = encode(toy_tok, toy_examples(2), max_len=512)
    model = add_lora(tiny_gemma(), LoraShape(r=4, alpha=8)).eval()
    b = make_batch(seqs)
    moved = b.to("cpu")
    assert all(torch.equal(getattr(b, f), getattr(moved, f)) for f in b.__dataclass_fields__)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device)
    assert device_of(model).type == device
    with torch.no_grad():
        lp = answer_logprobs(model, b)
    assert lp.device.type == device and lp.shape == b.mask.shape
