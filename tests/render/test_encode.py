"""A1111 prompt semantics: emphasis parsing, chunking, parity with diffusers for plain prompts."""

from __future__ import annotations

import pytest
import torch

from diffagent.render.encode import CHUNK, chunk_tokens, encode, parse_emphasis


@pytest.mark.parametrize(
    "text,expected",
    [
        ("a cat", [("a cat", 1.0)]),
        ("a (cat) dog", [("a ", 1.0), ("cat", 1.1), (" dog", 1.0)]),
        ("((cat))", [("cat", pytest.approx(1.21))]),
        ("[cat]", [("cat", pytest.approx(1 / 1.1))]),
        ("(cat:1.5), dog", [("cat", 1.5), (", dog", 1.0)]),
        ("(a (b:2) c:0.5)", [("a ", 0.5), ("b", 1.0), (" c", 0.5)]),
        (r"\(literal\) x", [("(literal) x", 1.0)]),
        ("a BREAK b", [("a ", 1.0), ("BREAK", -1.0), (" b", 1.0)]),
        ("BREAKFAST: eggs", [("BREAKFAST: eggs", 1.0)]),
        ("(unclosed", [("unclosed", pytest.approx(1.1))]),
        ("time 10:30", [("time 10:30", 1.0)]),
    ],
)
def test_parse_emphasis(text, expected):
    assert parse_emphasis(text) == expected


def test_chunks_of_75_break_at_commas_and_break(tiny):
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(tiny.root / "sd15" / "tokenizer")
    comma = tok(",", add_special_tokens=False).input_ids[0]
    words = ", ".join(["abcdef"] * 40)  # byte tokenizer: "abcdef" is 6 tokens, ", " one: 279 tokens
    chunks = chunk_tokens(tok, [(words, 1.0)], comma)
    assert len(chunks) == 4 and all(len(c.tokens) <= CHUNK for c in chunks)
    assert sum(len(c.tokens) for c in chunks) == 279
    assert all(tok.decode(c.tokens).strip().endswith(",") for c in chunks[:-1])  # cut after a comma
    assert len(chunk_tokens(tok, parse_emphasis("a BREAK b"), comma)) == 2


def test_plain_prompt_matches_diffusers_encode_prompt_sd15(tiny):
    pipe = tiny.sd15_pipe
    mine = encode(pipe, "sd1", "a photo of a cat", "blurry", 1)
    with torch.inference_mode():
        ref, neg = pipe.encode_prompt("a photo of a cat", "cpu", 1, True, negative_prompt="blurry")
    assert torch.equal(mine["prompt_embeds"], ref) and torch.equal(mine["negative_prompt_embeds"], neg)


def test_plain_prompt_matches_diffusers_encode_prompt_sdxl(tiny):
    pipe = tiny.sdxl_pipe
    for negative in ("blurry", ""):
        mine = encode(pipe, "sdxl", "a photo of a cat", negative, 2)
        with torch.inference_mode():
            ref = pipe.encode_prompt(
                "a photo of a cat", device="cpu", do_classifier_free_guidance=True, negative_prompt=negative or None
            )
        for got, want in zip(
            [
                mine[k]
                for k in (
                    "prompt_embeds",
                    "negative_prompt_embeds",
                    "pooled_prompt_embeds",
                    "negative_pooled_prompt_embeds",
                )
            ],
            ref,
            strict=True,
        ):
            assert torch.equal(got, want)


def test_emphasis_and_long_prompts_change_embeddings(tiny):
    pipe = tiny.sd15_pipe
    plain = encode(pipe, "sd1", "a cat on a mat", "", 1)["prompt_embeds"]
    weighted = encode(pipe, "sd1", "a (cat:1.5) on a mat", "", 1)["prompt_embeds"]
    assert weighted.shape == plain.shape and not torch.equal(weighted, plain)
    long = encode(pipe, "sd1", "cat " * 60, "", 1)  # 180 byte tokens: 3 chunks, negative padded to match
    assert long["prompt_embeds"].shape[1] == 3 * 77 == long["negative_prompt_embeds"].shape[1]


def test_clip_skip_selects_an_earlier_layer(tiny):
    pipe = tiny.sd15_pipe
    one = encode(pipe, "sd1", "a cat", "", 1)["prompt_embeds"]
    two = encode(pipe, "sd1", "a cat", "", 2)["prompt_embeds"]
    with torch.inference_mode():
        ids = pipe.tokenizer("a cat", padding="max_length", max_length=77, return_tensors="pt").input_ids
        out = pipe.text_encoder(ids, output_hidden_states=True)
        want = pipe.text_encoder.final_layer_norm(out.hidden_states[-2])
    assert torch.equal(two, want) and not torch.equal(one, two)
