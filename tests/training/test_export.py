"""Export: a tiny Gemma 3 and its LoRA to GGUF with llama.cpp's own converters; llama-cpp-python loads
both, and the adapter changes llama.cpp's logits the way it changes torch's."""

from __future__ import annotations

import io

import numpy as np
import pytest

torch = pytest.importorskip("torch")
llama_cpp = pytest.importorskip("llama_cpp")
spm = pytest.importorskip("sentencepiece")

from tiny_llm import tiny_gemma  # noqa: E402

from diffagent.errors import UserInputError  # noqa: E402
from diffagent.training.config import LoraShape  # noqa: E402
from diffagent.training.export import ExportFailed, converter_dir, export_adapter, export_model, logit_shift  # noqa: E402
from diffagent.training.model import add_lora  # noqa: E402

LLAMA_CPP_PYTHON = "0.3.36"
TOKENS = [2, 10, 11, 12, 13, 14, 15]


@pytest.fixture(scope="session")
def converter():
    """llama.cpp's converters from the llama-cpp-python sdist, cached in the user cache dir after the
    first download (pip, ~77 MB, once per machine)."""
    from diffagent.settings import Settings

    try:
        return converter_dir(Settings().cache_dir, LLAMA_CPP_PYTHON)
    except ExportFailed as e:
        pytest.skip(f"llama.cpp's converters could not be fetched (no PyPI access?): {e}")


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory, converter):
    """(HF folder, torch model, GGUF) of a tiny Gemma 3 with a SentencePiece tokenizer made on the spot."""
    d = tmp_path_factory.mktemp("tiny_gemma")
    buf = io.BytesIO()
    corpus = ["a watercolor fox in a misty forest", "Checkpoint: A B C", "LoRAs: none M N", "an anime cat"] * 4
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus),
        model_writer=buf,
        vocab_size=48,
        model_type="bpe",
        hard_vocab_limit=False,
        minloglevel=2,
        pad_id=0,
        eos_id=1,
        bos_id=2,
        unk_id=3,
    )
    (d / "tokenizer.model").write_bytes(buf.getvalue())
    vocab = spm.SentencePieceProcessor(model_proto=buf.getvalue()).get_piece_size()
    model = tiny_gemma(seed=1, vocab=vocab)
    model.save_pretrained(d)
    gguf = export_model(d, d / "base.gguf", converter=converter, outtype="f32")
    return d, model, gguf


def _llama_logits(base, lora=None) -> np.ndarray:
    llm = llama_cpp.Llama(
        model_path=str(base), lora_path=str(lora) if lora else None, n_ctx=64, n_threads=1, verbose=False
    )
    llm.eval(TOKENS)
    out = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1), shape=(llm.n_vocab(),)).copy()
    llm.close()
    return out


def test_the_base_gguf_matches_torch(tiny_base):
    _, model, gguf = tiny_base
    with torch.no_grad():
        ref = model(input_ids=torch.tensor([TOKENS])).logits[0, -1].numpy()
    got = _llama_logits(gguf)
    assert np.corrcoef(ref, got)[0, 1] > 0.99


@pytest.mark.parametrize("outtype", ["f16", "q8_0"])
def test_exported_adapter_loads_and_changes_the_output_like_torch(tiny_base, converter, tmp_path, outtype):
    hf_dir, model, base = tiny_base
    peft_model = add_lora(tiny_gemma(seed=1, vocab=model.config.vocab_size), LoraShape(r=4, alpha=8))
    torch.manual_seed(0)
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:  # peft starts B at zero (a no-op adapter); make it do something
            torch.nn.init.normal_(p, std=0.5)
    peft_model.save_pretrained(tmp_path / "adapter")
    out = export_adapter(
        tmp_path / "adapter", hf_dir, tmp_path / f"adapter-{outtype}.gguf", converter=converter, outtype=outtype
    )
    assert out.stat().st_size > 0 and not list(tmp_path.glob(".adapter-*"))  # no temp file left behind
    with torch.no_grad():
        tuned = peft_model(input_ids=torch.tensor([TOKENS])).logits[0, -1].numpy()
        with peft_model.disable_adapter():
            plain = peft_model(input_ids=torch.tensor([TOKENS])).logits[0, -1].numpy()
    delta_torch = tuned - plain
    delta_llama = _llama_logits(base, out) - _llama_logits(base)
    assert np.abs(delta_llama).max() > 0.1
    assert np.corrcoef(delta_torch, delta_llama)[0, 1] > 0.95
    assert logit_shift(base, out, TOKENS) == pytest.approx(float(np.abs(delta_llama).max()), rel=1e-3)


def test_export_refuses_a_folder_that_is_not_an_adapter(tiny_base, converter, tmp_path):
    hf_dir, _, _ = tiny_base
    with pytest.raises(UserInputError, match="adapter_config.json"):
        export_adapter(tmp_path, hf_dir, tmp_path / "x.gguf", converter=converter)


def test_missing_converter_without_downloads_says_what_to_run(tmp_path):
    with pytest.raises(ExportFailed, match="pip download --no-deps --no-binary :all: llama-cpp-python==9.9.9"):
        converter_dir(tmp_path, "9.9.9", allow_download=False)
