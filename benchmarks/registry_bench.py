"""Registry benchmark: import time, idempotency, search latency and retrieval quality.

    python benchmarks/registry_bench.py --dump ../shared/data/civitai-2023-07/models.jsonl.gz \
        [--images ../shared/data/civitai-2023-07/image_meta.train.jsonl.gz] [--workdir DIR]

(a) import   the full dump into a fresh registry (write + index, and separately embeddings), re-import
             and check that no row changed, then import a copy with one corrupt line and check that
             the import fails naming the line and leaves the registry unchanged.
(b) latency  hybrid search p50/p95 over real prompts at the dump's size and at 100,000 models (a
             synthetic expansion of a copy of the registry, made in the work dir); query embedding
             is timed separately from the rest of the search.
(c) recall   recall@10/@50 of the creator's checkpoint for SFW sample images of test-split pages, searching
             with the image's prompt (resource tags stripped), vs. popularity alone. The registry used
             here has the sample images of test-split pages removed, so creators' prompts don't leak.

Every database lives in the work dir (a temporary folder unless --workdir is given), never in the
repo. Results go to benchmarks/results/registry_bench.json (git-ignored) and a markdown table to stdout.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import random
import shutil
import sqlite3
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
from sqlalchemy import text as sql_text

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from diffagent.bench.split import split_of  # noqa: E402
from diffagent.errors import ImportFailed  # noqa: E402
from diffagent.prompttext import strip_resource_tags  # noqa: E402
from diffagent.registry.copy import copy_registry  # noqa: E402
from diffagent.registry.default import content_rows  # noqa: E402
from diffagent.registry.embeddings import Embedder  # noqa: E402
from diffagent.registry.importer import import_path  # noqa: E402
from diffagent.registry.index import SEARCHABLE_TYPES  # noqa: E402
from diffagent.registry.location import is_url  # noqa: E402
from diffagent.registry.store import Registry  # noqa: E402
from diffagent.registry.writer import MODEL_COLS, VERSION_COLS  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "registry_bench.json"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def pct(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)), 2) if values else float("nan")


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=2)
    os.replace(tmp, path)


def digest(db: Path) -> dict[str, str]:
    """A fingerprint of the registry's content tables and of its vectors."""
    out = {}
    for table, rows in content_rows(db).items():
        h = hashlib.sha256()
        for r in rows:
            h.update(repr(r).encode())
        out[table] = f"{len(rows)}:{h.hexdigest()[:16]}"
    con = sqlite3.connect(db)
    h = hashlib.sha256()
    n = 0
    for r in con.execute("SELECT kind, owner_id, model, text_hash, data FROM vector ORDER BY kind, owner_id"):
        h.update(repr(r).encode())
        n += 1
    con.close()
    out["vector"] = f"{n}:{h.hexdigest()[:16]}"
    return out


# -------------------------------------------------------------------------------------- (a) import


def bench_import(dump: Path, work: Path, embedder: Embedder, corrupt_line: int) -> tuple[Path, dict]:
    db = work / "full.db"
    db.unlink(missing_ok=True)
    log(f"(a) importing {dump} into a fresh registry {db}")
    t = time.perf_counter()
    first = import_path(dump, db, embedder=embedder, progress=True)
    wall = time.perf_counter() - t
    log(first.summary())
    before = digest(db)

    log("(a) re-importing the same dump")
    t = time.perf_counter()
    second = import_path(dump, db, embedder=embedder, progress=True)
    rewall = time.perf_counter() - t
    after = digest(db)
    changed = sorted(k for k in before if before[k] != after[k])
    log(f"re-import: {second.summary()}; changed tables: {changed or 'none'}")

    log(f"(a) importing a copy of the dump with line {corrupt_line} corrupted")
    bad = work / "corrupt.jsonl.gz"
    with gzip.open(dump, "rt", encoding="utf-8") as src, gzip.open(bad, "wt", encoding="utf-8", compresslevel=1) as dst:
        for n, line in enumerate(src, 1):
            dst.write(line[: len(line) // 2] + "\n" if n == corrupt_line else line)
    t = time.perf_counter()
    try:
        import_path(bad, db, embedder=embedder, progress=False)
        message, failed = "import succeeded", False
    except ImportFailed as e:
        message, failed = str(e), True
    bad_secs = time.perf_counter() - t
    unchanged = digest(db) == after
    named = f"{bad.name}:{corrupt_line}:" in message
    log(f"corrupt import: failed={failed} names line={named} registry unchanged={unchanged}: {message}")
    bad.unlink()

    return db, {
        "models": first.models,
        "versions": first.versions,
        "files": first.files,
        "sample_images": first.images,
        "versions_with_usage_stats": first.with_stats,
        "embedded": first.embedded,
        "seconds": {
            "write": round(first.seconds["write"], 1),
            "index": round(first.seconds["index"], 1),
            "write_plus_index": round(first.seconds["write"] + first.seconds["index"], 1),
            "embed": round(first.seconds.get("embed", 0.0), 1),
            "total": round(wall, 1),
        },
        "reimport": {
            "seconds": round(rewall, 1),
            "embedded": second.embedded,
            "changed_tables": changed,
            "unchanged": not changed,
        },
        "corrupt_line": {
            "line": corrupt_line,
            "failed": failed,
            "names_line": named,
            "registry_unchanged": unchanged,
            "seconds": round(bad_secs, 1),
            "message": message,
        },
    }


# ------------------------------------------------------------------------------------- (b) latency


def load_images(path: Path) -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def latency_queries(images: list[dict], n: int, seed: int = 0) -> list[str]:
    prompts = sorted(
        {
            q
            for im in images
            if im.get("image_nsfw") == "None"
            for q in [strip_resource_tags(im.get("prompt") or "")]
            if len(q) >= 20
        }
    )
    return random.Random(seed).sample(prompts, min(n, len(prompts)))


def expand(src: Path, dst: Path, total_models: int, *, noise: float = 0.02, seed: int = 0) -> int:
    """Copy ``src`` and add synthetic models until it holds ``total_models``: each copies a real
    searchable version under new ids, with a suffixed name, scaled downloads and noisy vectors."""
    shutil.copyfile(src, dst)
    con = sqlite3.connect(dst)
    have = con.execute("SELECT count(*) FROM model").fetchone()[0]
    need = total_models - have
    if need <= 0:
        con.close()
        return 0
    sources = con.execute(
        "SELECT v.id, v.model_id FROM model_version v JOIN model m ON m.id = v.model_id"
        f" WHERE m.type IN {SEARCHABLE_TYPES} ORDER BY v.id"
    ).fetchall()
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(sources), need)
    factors = rng.uniform(0.05, 1.5, need)
    words = ["remix", "lite", "turbo", "pruned", "merge", "finetune", "alpha", "beta", "redux", "mix"]
    mid0 = con.execute("SELECT max(id) FROM model").fetchone()[0] + 1
    vid0 = con.execute("SELECT max(id) FROM model_version").fetchone()[0] + 1
    con.execute(
        "CREATE TEMP TABLE syn (new_mid INTEGER, new_vid INTEGER PRIMARY KEY, src_mid INTEGER,"
        " src_vid INTEGER, suffix TEXT, factor REAL)"
    )
    con.executemany(
        "INSERT INTO syn VALUES (?, ?, ?, ?, ?, ?)",
        [
            (mid0 + j, vid0 + j, sources[p][1], sources[p][0], f"{words[j % len(words)]} {j}", float(factors[j]))
            for j, p in enumerate(picks)
        ],
    )
    model_expr = {c: f'm."{c}"' for c in MODEL_COLS} | {
        "id": "s.new_mid",
        "slug": "NULL",
        "name": "m.name || ' ' || s.suffix",
        "downloads": "CAST(m.downloads * s.factor AS INTEGER)",
    }
    con.execute(
        f"INSERT INTO model ({', '.join(chr(34) + c + chr(34) for c in MODEL_COLS)})"
        f" SELECT {', '.join(model_expr[c] for c in MODEL_COLS)} FROM syn s JOIN model m ON m.id = s.src_mid"
    )
    version_expr = {c: f'v."{c}"' for c in VERSION_COLS} | {
        "id": "s.new_vid",
        "model_id": "s.new_mid",
        "air": "'urn:air:synthetic:' || s.new_mid || '@' || s.new_vid",
        "downloads": "CAST(v.downloads * s.factor AS INTEGER)",
        "local_path": "NULL",
    }
    con.execute(
        f"INSERT INTO model_version ({', '.join(chr(34) + c + chr(34) for c in VERSION_COLS)})"
        f" SELECT {', '.join(version_expr[c] for c in VERSION_COLS)}"
        " FROM syn s JOIN model_version v ON v.id = s.src_vid"
    )
    for kind in ("version", "prompts"):
        vecs = {
            owner: (model, dim, data)
            for owner, model, dim, data in con.execute(
                "SELECT owner_id, model, dim, data FROM vector WHERE kind = ?", (kind,)
            )
        }
        rows = []
        for new_vid, src_vid in con.execute("SELECT new_vid, src_vid FROM syn ORDER BY new_vid"):
            if src_vid not in vecs:
                continue
            model, dim, data = vecs[src_vid]
            v = np.frombuffer(data, dtype=np.float16).astype(np.float32) + rng.normal(0, noise, dim)
            v /= np.linalg.norm(v) or 1.0
            rows.append((kind, new_vid, model, dim, "synthetic", v.astype(np.float16).tobytes()))
        con.executemany(
            "INSERT INTO vector (kind, owner_id, model, dim, text_hash, data) VALUES (?, ?, ?, ?, ?, ?)", rows
        )
    con.commit()
    con.close()
    return need


def embed_queries(queries: list[str], embedder: Embedder) -> tuple[dict[str, np.ndarray], dict[str, dict]]:
    """Query vectors, and single-query embedding time per torch thread count (on a loaded machine
    one thread embeds a single query faster than two)."""
    import torch

    default_threads = torch.get_num_threads()
    embedder.encode(["warm up"])
    embed_ms: dict[str, dict] = {}
    qvecs = {}
    for threads in sorted({default_threads, 1}, reverse=True):
        torch.set_num_threads(threads)
        ms, cpu = [], []
        for q in queries:
            t0, c0 = time.perf_counter(), time.process_time()
            qvecs[q] = embedder.encode([q])[0]
            ms.append((time.perf_counter() - t0) * 1000)
            cpu.append((time.process_time() - c0) * 1000)
        embed_ms[f"torch_threads_{threads}"] = {
            "p50": pct(ms, 50),
            "p95": pct(ms, 95),
            "cpu_p50": pct(cpu, 50),
            "cpu_p95": pct(cpu, 95),
        }
    torch.set_num_threads(default_threads)
    log(f"(b) single-query embedding: {json.dumps(embed_ms)}")
    return qvecs, embed_ms


def bench_latency(
    db, queries: list[str], qvecs: dict[str, np.ndarray], embed_ms: dict[str, dict], embedder: Embedder, label: str
) -> dict:
    """Search time with the query vector given; query embedding is timed apart (``embed_queries``). ``db``: a
    SQLite file or a PostgreSQL URL."""
    reg = Registry.open(db, embedder=embedder)
    with reg.engine.connect() as conn:
        models, versions = conn.execute(
            sql_text("SELECT (SELECT count(*) FROM model), (SELECT count(*) FROM model_version)")
        ).one()
    t = time.perf_counter()
    reg.warm()
    load = time.perf_counter() - t
    for q in queries[:5]:  # warm caches (SQLite pages, BLAS)
        reg.search(q, limit=20, query_vector=qvecs[q])
    search_ms, search_cpu, ckpt_ms = [], [], []
    for q in queries:
        t0, c0 = time.perf_counter(), time.process_time()
        hits = reg.search(q, limit=20, query_vector=qvecs[q])
        search_ms.append((time.perf_counter() - t0) * 1000)
        search_cpu.append((time.process_time() - c0) * 1000)
        assert hits, q
        t0 = time.perf_counter()
        reg.search(q, types=["checkpoint"], base={"sd1"}, limit=20, query_vector=qvecs[q])
        ckpt_ms.append((time.perf_counter() - t0) * 1000)
    reg.close()
    best_embed = min(embed_ms.values(), key=lambda r: r["p50"])
    out = {
        "label": label,
        "database": "postgresql" if is_url(db) else "sqlite",
        "models": models,
        "versions": versions,
        "queries": len(queries),
        "index_load_seconds": round(load, 2),
        "query_embedding_ms": embed_ms,
        "search_without_embedding_ms": {
            "p50": pct(search_ms, 50),
            "p95": pct(search_ms, 95),
            "cpu_p50": pct(search_cpu, 50),
            "cpu_p95": pct(search_cpu, 95),
        },
        "load_avg": os.getloadavg(),
        "end_to_end_ms_estimate": {
            "p50": round(best_embed["p50"] + pct(search_ms, 50), 2),
            "note": "fastest query-embedding p50 + search p50",
        },
        "search_checkpoint_sd15_filter_ms": {"p50": pct(ckpt_ms, 50), "p95": pct(ckpt_ms, 95)},
    }
    log(f"(b) latency at {models:,} models / {versions:,} versions: {json.dumps(out)}")
    return out


# -------------------------------------------------------------------------------------- (c) recall


def build_holdout(full: Path, dump: Path, work: Path, embedder: Embedder, reuse: bool = False) -> tuple[Path, dict]:
    """A registry without the sample images of test-split pages: a copy of ``full`` re-imported with
    those images dropped (write_records replaces every page's images, so this equals a fresh import
    with the same filter, and only the changed prompt vectors are embedded again)."""
    db = work / "holdout.db"
    if reuse and db.exists():
        log(f"(c) reusing {db}")
        return db, {"reused": str(db)}
    shutil.copyfile(full, db)
    log("(c) building the hold-out registry (sample images of test-split pages removed)")
    report = import_path(dump, db, embedder=embedder, progress=True, keep_images=lambda page: split_of(page) != "test")
    log(report.summary())
    return db, {
        "seconds": round(report.seconds["total"], 1),
        "embedded": report.embedded,
        "sample_images": report.images,
    }


def bench_recall(db: Path, images: list[dict], embedder: Embedder, ks=(1, 10, 50), ablations: bool = False) -> dict:
    con = sqlite3.connect(db)
    held_ids = {r[0] for r in con.execute("SELECT id FROM sample_image")}
    held_prompts = {r[0] for r in con.execute("SELECT prompt FROM sample_image")}
    by_hash: dict[str, set[int]] = defaultdict(set)
    for autov2, vid in con.execute(
        "SELECT f.autov2, f.version_id FROM model_file f JOIN model_version v ON v.id = f.version_id"
        " JOIN model m ON m.id = v.model_id WHERE m.type = 'checkpoint' AND f.autov2 IS NOT NULL"
    ):
        by_hash[autov2.upper()].add(vid)
    nsfw_versions = {
        r[0] for r in con.execute("SELECT v.id FROM model_version v JOIN model m ON m.id = v.model_id WHERE m.nsfw")
    }
    con.close()

    cases = []
    for im in images:
        rc = im.get("resolved_checkpoint")
        if rc is None or im.get("image_nsfw") != "None" or split_of(im["attached_model_id"]) != "test":
            continue
        q = strip_resource_tags(im.get("prompt") or "")
        if not q:
            continue
        same = by_hash.get((im.get("model_hash") or "").upper(), set()) | {rc["version_id"]}
        cases.append(
            {
                "id": im["image_id"],
                "query": q,
                "target": rc["version_id"],
                "same_weights": same,
                "leaked": q in held_prompts,
            }
        )
    queries = sorted({c["query"] for c in cases})
    log(
        f"(c) {len(cases)} SFW test-split images with a resolved checkpoint, {len(queries)} distinct prompts, "
        f"{len({c['target'] for c in cases})} distinct target checkpoints"
    )
    leak = {
        "eval_images_present_in_registry": sum(c["id"] in held_ids for c in cases),
        "eval_prompts_also_on_other_pages": sum(c["query"] in held_prompts for c in cases),
    }
    log(f"(c) leakage check: {leak}")

    t = time.perf_counter()
    qvecs = embedder.encode(queries, batch_size=64)
    qv = dict(zip(queries, qvecs, strict=True))
    embed_secs = time.perf_counter() - t
    log(f"(c) embedded {len(queries)} queries in {embed_secs:.0f}s")

    reg = Registry.open(db, embedder=embedder)
    variants = {"hybrid": None}
    if ablations:  # each signal of Registry.search alone (whatever signals it has today)
        signals = [s for s in Registry.WEIGHTS if s != "prior"]
        variants |= {f"{s}_only": {t: float(t == s) for t in Registry.WEIGHTS} for s in signals}
    out: dict = {
        "images": len(cases),
        "distinct_prompts": len(queries),
        "distinct_targets": len({c["target"] for c in cases}),
        "query_embedding_seconds": round(embed_secs, 1),
        "leakage": leak,
        "settings": {},
    }
    kmax = max(ks)
    for allow_nsfw in (False, True):
        reg.allow_nsfw = allow_nsfw
        setting = "allow_nsfw" if allow_nsfw else "sfw_only"
        reachable = sum(allow_nsfw or c["target"] not in nsfw_versions for c in cases)
        res = {"targets_reachable": reachable}
        ranked: dict[str, dict[str, list[int]]] = {}
        popular = reg.popular(types=["checkpoint"], limit=kmax)
        ranked["popularity"] = {q: popular for q in queries}
        for name, weights in variants.items():
            if name != "hybrid" and allow_nsfw:
                continue
            t = time.perf_counter()
            ranked[name] = {
                q: [
                    h.version.id
                    for h in reg.search(q, types=["checkpoint"], limit=kmax, query_vector=qv[q], weights=weights)
                ]
                for q in queries
            }
            log(f"(c) {setting} {name}: {len(queries)} searches in {time.perf_counter() - t:.0f}s")
        for name, lists in ranked.items():
            exact, weights_hit, unleaked = Counter(), Counter(), Counter()
            for c in cases:
                ids = lists[c["query"]]
                for k in ks:
                    top = ids[:k]
                    exact[k] += c["target"] in top
                    weights_hit[k] += bool(c["same_weights"].intersection(top))
                    unleaked[k] += (not c["leaked"]) and c["target"] in top
            n_unleaked = sum(not c["leaked"] for c in cases)
            res[name] = (
                {f"recall@{k}": round(exact[k] / len(cases), 4) for k in ks}
                | {f"recall@{k}_same_weights": round(weights_hit[k] / len(cases), 4) for k in ks}
                | {
                    # prompts that also appear verbatim on a page the registry keeps (creators reuse them)
                    f"recall@{k}_prompt_unseen": round(unleaked[k] / max(n_unleaked, 1), 4)
                    for k in ks
                }
            )
        out["settings"][setting] = res
        log(f"(c) {setting}: {json.dumps(res)}")
    reg.close()
    return out


# --------------------------------------------------------------------------------------------- main


def markdown(results: dict) -> str:
    lines = []
    a = results.get("import")
    if a:
        s = a["seconds"]
        lines += [
            "| import (fresh DB) | value |",
            "|---|---|",
            f"| models / versions / sample images | {a['models']:,} / {a['versions']:,} / {a['sample_images']:,} |",
            f"| write + index (s) | {s['write_plus_index']} (write {s['write']}, index {s['index']}) |",
            f"| embedding (s) | {s['embed']} ({a['embedded']}) |",
            f"| total wall (s) | {s['total']} |",
            f"| re-import (s), tables changed | {a['reimport']['seconds']}, "
            f"{a['reimport']['changed_tables'] or 'none'} |",
            f"| corrupt line {a['corrupt_line']['line']}: fails naming it / registry unchanged | "
            f"{a['corrupt_line']['names_line']} / {a['corrupt_line']['registry_unchanged']} |",
            "",
        ]
    lat = results.get("latency")
    if lat:
        lines += [
            "| search latency (ms) | models | search p50 / p95 (CPU p50 / p95) | ckpt+sd15 filter p50 / p95 |"
            " query embedding p50 / p95 (CPU p50) | load avg |",
            "|---|---|---|---|---|---|",
        ]
        for r in lat:
            emb = ", ".join(
                f"{k.replace('torch_threads_', '')} thr: {v['p50']} / {v['p95']} ({v.get('cpu_p50')})"
                for k, v in r["query_embedding_ms"].items()
            )
            sm = r["search_without_embedding_ms"]
            lines.append(
                f"| {r['label']} | {r['models']:,} | {sm['p50']} / {sm['p95']} ({sm.get('cpu_p50')} / "
                f"{sm.get('cpu_p95')}) | {r['search_checkpoint_sd15_filter_ms']['p50']}"
                f" / {r['search_checkpoint_sd15_filter_ms']['p95']} | {emb} | "
                f"{', '.join(f'{x:.1f}' for x in r.get('load_avg', []))} |"
            )
        lines.append("")
    rec = results.get("recall")
    if rec:
        lines += [
            f"Recall of the creator's checkpoint, {rec['images']:,} SFW test-split images "
            f"({rec['distinct_prompts']:,} prompts, {rec['distinct_targets']} checkpoints):",
            "",
            "| setting | method | R@1 | R@10 | R@50 | R@10 same weights | R@50 same weights | R@50 prompt unseen |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for setting, res in rec["settings"].items():
            for name, r in res.items():
                if not isinstance(r, dict):
                    continue
                lines.append(
                    f"| {setting} | {name} | {r['recall@1']} | {r['recall@10']} | {r['recall@50']} | "
                    f"{r['recall@10_same_weights']} | {r['recall@50_same_weights']} | "
                    f"{r.get('recall@50_prompt_unseen', '-')} |"
                )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dump", type=Path, required=True, help="Civitai models .jsonl.gz")
    p.add_argument(
        "--images",
        type=Path,
        default=None,
        help="image_meta .jsonl.gz (default: image_meta.train.jsonl.gz next to --dump)",
    )
    p.add_argument("--workdir", type=Path, default=None, help="where the databases go (default: a temp dir)")
    p.add_argument(
        "--stages",
        nargs="*",
        default=["import", "latency", "recall"],
        choices=["import", "latency", "recall"],
        help="later stages reuse WORKDIR/full.db when 'import' is skipped",
    )
    p.add_argument("--queries", type=int, default=200, help="prompts for the latency benchmark")
    p.add_argument(
        "--postgres",
        default=None,
        help="URL of an empty PostgreSQL database: the latency stage also "
        "copies the dump's registry there and times search on it",
    )
    p.add_argument("--synthetic-models", type=int, default=100_000)
    p.add_argument("--corrupt-line", type=int, default=9_000)
    p.add_argument("--ablations", action="store_true", help="also score single-signal rankings in (c)")
    p.add_argument(
        "--reuse-holdout",
        action="store_true",
        help="(c) reuses WORKDIR/holdout.db from an earlier run instead of rebuilding it",
    )
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)

    images_path = args.images or args.dump.with_name("image_meta.train.jsonl.gz")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="registry-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    embedder = Embedder()
    results: dict = {"dump": str(args.dump), "machine": {"cpus": os.cpu_count(), "load_avg_at_start": os.getloadavg()}}
    if args.out.exists():  # keep the stages not rerun
        results = json.loads(args.out.read_text()) | results
    full = work / "full.db"
    if "import" in args.stages:
        full, results["import"] = bench_import(args.dump, work, embedder, args.corrupt_line)
        write_json(args.out, results)
    elif not full.exists():
        p.error(f"{full} does not exist; run the 'import' stage first")
    needs_images = bool({"latency", "recall"} & set(args.stages))
    if needs_images and not images_path.is_file():
        p.error(f"{images_path} does not exist; pass --images (image_meta.train.jsonl.gz of the shared data)")
    images = load_images(images_path) if needs_images else []
    if "latency" in args.stages:
        queries = latency_queries(images, args.queries)
        qvecs, embed_ms = embed_queries(queries, embedder)
        results["latency"] = [bench_latency(full, queries, qvecs, embed_ms, embedder, "shared dump")]
        if args.postgres:  # the same registry in PostgreSQL (copied: rows and vectors as they are)
            copied = copy_registry(full, args.postgres)
            log(f"(b) copied {full} to {copied['dest']} in {copied['seconds']} s")
            results["latency"].append(
                bench_latency(args.postgres, queries, qvecs, embed_ms, embedder, "shared dump on PostgreSQL")
            )
        big = work / "synthetic.db"
        t = time.perf_counter()
        added = expand(full, big, args.synthetic_models)
        log(f"(b) synthetic expansion: +{added:,} models in {time.perf_counter() - t:.0f}s")
        results["latency"].append(bench_latency(big, queries, qvecs, embed_ms, embedder, "synthetic expansion"))
        for f in work.glob(big.name + "*"):  # the DB and caches the registry keeps beside it
            f.unlink()
        write_json(args.out, results)
    if "recall" in args.stages:
        holdout, build = build_holdout(full, args.dump, work, embedder, reuse=args.reuse_holdout)
        results.setdefault("holdout_build", build)
        if "reused" not in build:
            results["holdout_build"] = build
        results["recall"] = bench_recall(holdout, images, embedder, ablations=args.ablations)
        write_json(args.out, results)
    results["machine"]["load_avg_at_end"] = os.getloadavg()
    write_json(args.out, results)
    print(markdown(results))
    log(f"results in {args.out}; databases in {work}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
