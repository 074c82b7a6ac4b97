"""Prompt -> text-encoder embeddings with A1111 semantics: emphasis weights, 75-token chunks, clip skip.

Civitai prompts are written for A1111: ``(word:1.3)``, ``((word))``, ``[word]``, ``BREAK`` and prompts far
beyond CLIP's 77 tokens. diffusers ignores the syntax (the brackets become tokens) and truncates at 77. So we
encode the way A1111 does:

- the prompt is split into (text, weight) fragments (``parse_emphasis``): ``(x)`` multiplies by 1.1, ``[x]``
  divides by 1.1, ``(x:w)`` sets ``w``, nesting multiplies, ``\\(`` is a literal bracket;
- tokens are packed into chunks of 75 (plus start/end tokens), breaking at a recent comma when a chunk fills
  and at every ``BREAK``; each chunk is encoded separately and the results are concatenated;
- every token's embedding is scaled by its weight and the chunk is rescaled to its original mean;
- clip skip N picks hidden state -N. SD 1.x then applies the final layer norm (as A1111 and diffusers do).
  SDXL always conditions on the penultimate layer without that norm, and A1111 ignores Clip skip for SDXL by
  default (Civitai sends 2 for every SDXL request), so for SDXL 1 and 2 both mean -2 and N > 2 means -N
  (diffusers' SDXL ``clip_skip=N-2``).

This also sidesteps diffusers' own ``clip_skip`` path, which breaks on transformers >= 5.6 (it reads
``text_encoder.text_model``, which the flattened ``CLIPTextModel`` no longer has). A prompt with no emphasis
and at most 75 tokens encodes exactly as diffusers' ``encode_prompt`` does (tested).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from diffagent.families import FLOW

CHUNK = 75  # tokens per chunk, without the start/end tokens
COMMA_BACKTRACK = 20  # a chunk that fills up is cut at a comma among its last this-many tokens
EMPHASIS = 1.1

_TOKEN = re.compile(r"\\[()\[\]\\]|\(|\)|\[|\]|:\s*([+-]?(?:\d+\.?\d*|\.\d+))\s*\)|\bBREAK\b|[^\\()\[\]:B]+|.", re.S)


def parse_emphasis(text: str) -> list[tuple[str, float]]:
    """A1111 emphasis syntax -> [(text, weight)]; ``("BREAK", -1.0)`` marks a forced chunk break."""
    out: list[tuple[str, float]] = []
    stack: list[tuple[str, int]] = []  # (bracket, index into out where the group started)

    def add(s: str, w: float = 1.0) -> None:
        if out and out[-1][1] == w and out[-1][0] != "BREAK":
            out[-1] = (out[-1][0] + s, w)
        else:
            out.append((s, w))

    def scale(start: int, factor: float) -> None:
        for i in range(start, len(out)):
            if out[i][1] != -1.0:
                out[i] = (out[i][0], out[i][1] * factor)

    for m in _TOKEN.finditer(text):
        tok = m.group(0)
        if tok.startswith("\\") and len(tok) == 2:
            add(tok[1])
        elif tok in ("(", "["):
            stack.append((tok, len(out)))
            out.append(("", 1.0))  # a boundary so the group's fragments do not merge with the text before it
        elif tok == ")" and stack and stack[-1][0] == "(":
            scale(stack.pop()[1], EMPHASIS)
        elif tok == "]" and stack and stack[-1][0] == "[":
            scale(stack.pop()[1], 1 / EMPHASIS)
        elif m.group(1) is not None and stack and stack[-1][0] == "(":
            scale(stack.pop()[1], float(m.group(1)))  # "(text:1.3)" - the weight replaces the 1.1
        elif tok == "BREAK":
            out.append(("BREAK", -1.0))
        else:
            add(tok)
    # unclosed brackets apply to the end of the prompt, as in A1111
    for bracket, start in reversed(stack):
        scale(start, EMPHASIS if bracket == "(" else 1 / EMPHASIS)
    merged: list[tuple[str, float]] = []
    for s, w in out:
        if not s:
            continue
        if merged and merged[-1][1] == w and w != -1.0:
            merged[-1] = (merged[-1][0] + s, w)
        else:
            merged.append((s, w))
    return merged or [("", 1.0)]


@dataclass
class Chunk:
    tokens: list[int]
    weights: list[float]


def chunk_tokens(tokenizer, fragments: list[tuple[str, float]], comma_id: int | None) -> list[Chunk]:
    """Pack weighted fragments into chunks of at most ``CHUNK`` tokens (A1111's packing)."""
    chunks: list[Chunk] = []
    cur = Chunk([], [])
    last_comma = -1

    def close() -> None:
        nonlocal cur, last_comma
        chunks.append(cur)
        cur = Chunk([], [])
        last_comma = -1

    for text, weight in fragments:
        if weight == -1.0:  # BREAK
            close()
            continue
        ids = tokenizer(text, add_special_tokens=False, truncation=False, verbose=False).input_ids
        for tid in ids:
            if comma_id is not None and tid == comma_id:
                last_comma = len(cur.tokens)
            elif len(cur.tokens) == CHUNK and last_comma >= 0 and len(cur.tokens) - last_comma <= COMMA_BACKTRACK:
                # move the words after the last comma into the next chunk instead of cutting a phrase in two
                rest_t, rest_w = cur.tokens[last_comma + 1 :], cur.weights[last_comma + 1 :]
                cur.tokens, cur.weights = cur.tokens[: last_comma + 1], cur.weights[: last_comma + 1]
                close()
                cur.tokens, cur.weights = rest_t, rest_w
            if len(cur.tokens) == CHUNK:
                close()
            cur.tokens.append(tid)
            cur.weights.append(weight)
    if cur.tokens or not chunks:
        chunks.append(cur)
    return chunks


def _comma_id(tokenizer) -> int | None:
    ids = tokenizer(",", add_special_tokens=False).input_ids
    return ids[0] if len(ids) == 1 else None


def _ids(tokenizer, chunk: Chunk):
    """[start] + tokens + [end] + padding to 77, and the matching weights (1.0 outside the text)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = [tokenizer.bos_token_id] + chunk.tokens + [tokenizer.eos_token_id]
    weights = [1.0] + chunk.weights + [1.0]
    n = CHUNK + 2
    return ids + [pad] * (n - len(ids)), weights + [1.0] * (n - len(weights))


def _final_norm(encoder):
    # transformers >= 5.6 flattened CLIPTextModel; older versions (and *WithProjection) keep .text_model
    return encoder.final_layer_norm if hasattr(encoder, "final_layer_norm") else encoder.text_model.final_layer_norm


def _apply_weights(z, weights):
    """Scale each token by its weight, then restore the chunk's mean (A1111's emphasis)."""
    import torch

    if all(w == 1.0 for w in weights):
        return z  # keeps unweighted prompts bit-identical to diffusers
    w = torch.tensor(weights, dtype=z.dtype, device=z.device)
    original = z.mean()
    z = z * w[None, :, None]
    return z * (original / z.mean())


def _token_chunks(pipe, tokenizer, text: str) -> list[Chunk]:
    # textual inversion: "tok" -> "tok tok_1 ..." for multi-vector embeddings (a no-op without any loaded)
    if hasattr(pipe, "maybe_convert_prompt"):
        text = pipe.maybe_convert_prompt(text, tokenizer)
    return chunk_tokens(tokenizer, parse_emphasis(text), _comma_id(tokenizer))


def execution_device(pipe):
    """Where the pipeline computes: its device, or with CPU offload (``Settings.offload``) the GPU the hooks move each
    encoder to while its own parameters wait on the CPU (or, sequential, on the meta device)."""
    return getattr(pipe, "_execution_device", None) or pipe.device


def _pad_chunks(a: list[Chunk], b: list[Chunk]) -> None:
    """Positive and negative must have the same number of chunks; pad with empty ones (A1111)."""
    while len(a) < len(b):
        a.append(Chunk([], []))
    while len(b) < len(a):
        b.append(Chunk([], []))


def encode_sd1(pipe, prompt: str, negative: str, clip_skip: int) -> dict:
    """``prompt_embeds`` / ``negative_prompt_embeds`` for an SD 1.x pipeline."""
    import torch

    tok, enc = pipe.tokenizer, pipe.text_encoder
    pos, neg = _token_chunks(pipe, tok, prompt), _token_chunks(pipe, tok, negative)
    _pad_chunks(pos, neg)
    device = execution_device(pipe)

    def run(chunks: list[Chunk]):
        parts = []
        for chunk in chunks:
            ids, weights = _ids(tok, chunk)
            out = enc(torch.tensor([ids], device=device), output_hidden_states=True)
            z = out.last_hidden_state if clip_skip <= 1 else _final_norm(enc)(out.hidden_states[-clip_skip])
            parts.append(_apply_weights(z, weights))
        return torch.cat(parts, dim=1)

    return {"prompt_embeds": run(pos), "negative_prompt_embeds": run(neg)}


def encode_sdxl(pipe, prompt: str, negative: str, clip_skip: int) -> dict:
    """Embeddings + pooled embeddings for an SDXL pipeline (both text encoders)."""
    import torch

    layer = -max(clip_skip, 2)  # SDXL conditions on the penultimate layer (module docstring)
    encoders = [(pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2)]
    zero_negative = not negative.strip() and getattr(pipe.config, "force_zeros_for_empty_prompt", False)

    def run(text: str, other: str):
        per_encoder, pooled = [], None
        for i, (tok, enc) in enumerate(encoders):
            chunks, other_chunks = _token_chunks(pipe, tok, text), _token_chunks(pipe, tok, other)
            _pad_chunks(chunks, other_chunks)
            zs, ws = [], []
            for chunk in chunks:
                ids, weights = _ids(tok, chunk)
                out = enc(torch.tensor([ids], device=execution_device(pipe)), output_hidden_states=True)
                zs.append(out.hidden_states[layer])
                ws.append(weights)
                if i == 1 and pooled is None:
                    pooled = out.text_embeds  # the projected pooled output of the first chunk (A1111, SGM)
            per_encoder.append((zs, ws))
        (z1, w1), (z2, w2) = per_encoder
        if len(z1) != len(z2):  # the tokenizers agree on ids, so this means a broken tokenizer pair
            raise RuntimeError("SDXL tokenizers split the prompt into different chunk counts")
        z = torch.cat(
            [_apply_weights(torch.cat([a, b], dim=-1), wa) for a, b, wa in zip(z1, z2, w1, strict=True)], dim=1
        )
        return z, pooled

    z, pooled = run(prompt, negative)
    if zero_negative:  # diffusers' and SGM's unconditional for SDXL base: zeros, not the encoded ""
        nz, npooled = torch.zeros_like(z), torch.zeros_like(pooled)
    else:
        nz, npooled = run(negative, prompt)
    return {
        "prompt_embeds": z,
        "negative_prompt_embeds": nz,
        "pooled_prompt_embeds": pooled,
        "negative_pooled_prompt_embeds": npooled,
    }


def plain_text(prompt: str) -> str:
    """The prompt's words without A1111's emphasis syntax (``(fox:1.3)`` -> ``fox``, ``BREAK`` dropped)."""
    return " ".join("".join(t for t, w in parse_emphasis(prompt) if w != -1.0).split())


def encode_flow(pipe, ecosystem: str, prompt: str, negative: str) -> dict:
    """FLUX.1 / SD 3: the pipeline's own encoders (CLIP and T5; T5 reads 256-512 tokens, so no chunking), given the
    prompt without A1111's emphasis syntax, which T5 would read as literal brackets and numbers. SD 3 takes the
    negative prompt; FLUX.1 has none (``ApiCall`` refuses one)."""
    kwargs = {"prompt": plain_text(prompt)}
    if ecosystem == "sd3":
        kwargs["negative_prompt"] = plain_text(negative)
    return kwargs


def encode(pipe, ecosystem: str, prompt: str, negative: str, clip_skip: int) -> dict:
    """Keyword arguments for the pipeline call that replace ``prompt``/``negative_prompt``."""
    import torch

    if ecosystem in FLOW:
        return encode_flow(pipe, ecosystem, prompt, negative)
    with torch.inference_mode():
        if ecosystem == "sdxl":
            return encode_sdxl(pipe, prompt, negative, clip_skip)
        return encode_sd1(pipe, prompt, negative, clip_skip)
