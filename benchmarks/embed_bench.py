"""Bulk embedding engines on the same texts: texts/s, the ratio to the numpy encoder, and how far the vectors are
from sentence-transformers'.

    python benchmarks/embed_bench.py --dump ../shared/data/civitai-2023-07/models.jsonl.gz [--n 1024]

Samples N model texts (as the registry embeds them: name, version, tags, trigger words, description) and N SFW
creators' prompts (first 400 characters) from the dump's first pages, seeded; nothing is written but the printed
table. Each engine encodes the whole sample ``--repeats`` times at the registry's bulk batch size; the median
wall time counts. Engines whose packages are missing are reported as such.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffagent.registry.civitai import item_to_record, iter_items  # noqa: E402
from diffagent.registry.embeddings import BULK_BATCH, Embedder  # noqa: E402
from diffagent.registry.index import version_text  # noqa: E402


def sample_texts(dump: Path, n: int, seed: int = 0, pool: int = 8000) -> list[str]:
    cards, prompts = [], []
    for where, item in iter_items(dump):
        record = item_to_record(item, where)
        for v in record.versions:
            cards.append(version_text(record.name, v.name, record.tags, v.trained_words, record.description or ""))
            prompts.extend(im.prompt[:400] for im in v.images if im.prompt and not im.nsfw)
        if len(cards) >= pool and len(prompts) >= n:
            break
    rnd = random.Random(seed)
    return rnd.sample(cards, min(n, len(cards))) + rnd.sample(prompts, min(n, len(prompts)))


def engines(embedder: Embedder):
    """name -> encode(texts) for every engine this install has."""
    out = {}
    bert = embedder.numpy_encoder()
    if bert is not None:
        out["numpy (base install)"] = lambda t: bert.encode(t, batch_size=BULK_BATCH)
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        print("sentence-transformers: not installed", file=sys.stderr)
    else:
        st = SentenceTransformer(str(embedder.check()), device="cpu", local_files_only=True)
        st.max_seq_length = embedder.max_seq_length
        out["sentence-transformers (torch)"] = lambda t: st.encode(t, batch_size=BULK_BATCH, normalize_embeddings=True)
    onnx = embedder.onnx_encoder()
    if onnx is None:
        print("onnxruntime: not installed (the embed extra)", file=sys.stderr)
    else:
        out["ONNX Runtime (embed extra)"] = lambda t: onnx.encode(t, batch_size=BULK_BATCH)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dump", type=Path, required=True, help="Civitai models dump (models.jsonl.gz)")
    p.add_argument("--n", type=int, default=1024, help="model texts and as many prompts")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)

    texts = sample_texts(args.dump, args.n)
    embedder = Embedder()
    rates, vectors = {}, {}
    for name, encode in engines(embedder).items():
        encode(texts[:32])  # warm: weights, session, first allocations
        times = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            vectors[name] = np.asarray(encode(texts), dtype=np.float32)
            times.append(time.perf_counter() - t)
        rates[name] = len(texts) / statistics.median(times)
        print(f"{name}: {rates[name]:.1f} texts/s (median of {args.repeats})", file=sys.stderr, flush=True)

    base = rates.get("numpy (base install)")
    ref = vectors.get("sentence-transformers (torch)")
    print(f"\n{len(texts)} texts ({args.n} model texts, {len(texts) - args.n} prompts), batch {BULK_BATCH}\n")
    print("| engine | texts/s | x numpy | largest difference from sentence-transformers |")
    print("|---|---|---|---|")
    for name, rate in rates.items():
        diff = f"{np.abs(vectors[name] - ref).max():.1e}" if ref is not None else "-"
        ratio = f"{rate / base:.2f}" if base else "-"
        print(f"| {name} | {rate:.1f} | {ratio} | {diff} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
