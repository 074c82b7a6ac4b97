"""``diffagent registry ...``: import, sync, scan, build-default, copy, search, stats, show."""

from __future__ import annotations

import json
import sys

from diffagent.cli import _registry_arg as _location
from diffagent.cli import add_command, add_group
from diffagent.settings import Settings


def _embedder(args, settings: Settings):
    from diffagent.registry.embeddings import Embedder

    return None if getattr(args, "no_vectors", False) else Embedder(settings.embedder)


def cmd_import(args, settings: Settings) -> int:
    from diffagent.registry.importer import import_path

    keep = None
    if args.holdout_split:
        from diffagent.bench.split import split_of

        keep = lambda page_id: split_of(page_id) not in args.holdout_split  # noqa: E731
    report = import_path(
        args.source, settings.registry, embedder=_embedder(args, settings), progress=not args.quiet, keep_images=keep
    )
    print(report.summary())
    return 0


def cmd_scan(args, settings: Settings) -> int:
    from pathlib import Path

    from diffagent.registry.scan import scan

    report = scan(
        settings.registry,
        [Path(d) for d in args.folders],
        cache_path=settings.data_dir / "scan-hashes.json",
        import_unknown=not args.no_import,
        embedder=_embedder(args, settings),
        progress=not args.quiet,
    )
    print(json.dumps(report.as_dict()) if args.json else report.summary())
    return 0


def cmd_sync(args, settings: Settings) -> int:
    from diffagent.registry.sync import sync

    params = {}
    if args.types:
        params["types"] = args.types
    if args.query:
        params["query"] = args.query
    if args.nsfw:
        params["nsfw"] = "true"
    report = sync(
        settings.registry,
        base_url=args.base_url or settings.civitai_base_url,
        api_key=settings.civitai_api_key,
        embedder=_embedder(args, settings),
        params=params,
        max_pages=args.max_pages,
        progress=not args.quiet,
    )
    print(report.summary())
    return 0


def cmd_build_default(args, settings: Settings) -> int:
    from diffagent.errors import UserInputError
    from diffagent.registry.default import SOURCE, build_default
    from diffagent.registry.embeddings import Embedder
    from diffagent.registry.location import is_url

    if is_url(settings.registry):
        raise UserInputError(
            "build-default writes a SQLite file; build it, then move it into the database with "
            "`diffagent registry copy registry.db postgresql://...`"
        )
    report = build_default(
        settings.registry, source=args.source or SOURCE, embedder=Embedder(settings.embedder), progress=not args.quiet
    )
    print(f"wrote {settings.registry}: {report.summary()}")
    return 0


def cmd_copy(args, settings: Settings) -> int:
    from diffagent.registry.copy import copy_registry

    report = copy_registry(args.source, args.dest, progress=not args.quiet)
    rows = ", ".join(f"{n} {t}" for t, n in report["rows"].items())
    print(
        json.dumps(report)
        if args.json
        else f"copied {report['source']} to {report['dest']} in {report['seconds']} s: {rows}"
    )
    return 0


def _registry(settings: Settings):
    from diffagent.registry.store import Registry

    return Registry.from_settings(settings)


def cmd_search(args, settings: Settings) -> int:
    from diffagent.families import parse_base_constraint

    reg = _registry(settings)
    hits = reg.search(
        args.query,
        types=args.type,
        base=parse_base_constraint(args.base),
        min_downloads=args.min_downloads,
        limit=args.limit,
    )
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "id": h.version.id,
                        "air": h.version.air,
                        "name": h.version.display_name,
                        "type": h.version.type,
                        "base_model": h.version.base_model,
                        "downloads": h.version.downloads,
                        "score": round(h.score, 4),
                        "signals": {k: round(v, 4) for k, v in h.signals.items()},
                    }
                    for h in hits
                ],
                indent=2,
            )
        )
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"registry search: {args.query!r}")
    for col in ("id", "name", "type", "base", "downloads", "score"):
        table.add_column(col, justify="right" if col in ("id", "downloads", "score") else "left")
    for h in hits:
        v = h.version
        table.add_row(str(v.id), v.display_name[:48], v.type, v.base_model, f"{v.downloads:,}", f"{h.score:.3f}")
    Console().print(table)
    if not hits:
        print("no models match; loosen --type/--base/--min-downloads", file=sys.stderr)
    return 0


def cmd_stats(args, settings: Settings) -> int:
    stats = _registry(settings).stats()
    if args.json:
        print(json.dumps(stats, indent=2))
    else:
        for k, v in stats.items():
            print(f"{k:28} {v}")
    return 0


def cmd_show(args, settings: Settings) -> int:
    info = _registry(settings).version(args.id)
    if args.json:
        print(info.model_dump_json(indent=2))
        return 0
    print(f"{info.display_name}  [{info.type}, {info.base_model}]  id {info.id}")
    print(f"  AIR        {info.air}")
    print(f"  creator    {info.creator}   downloads {info.downloads:,}   nsfw {info.nsfw}")
    print(f"  tags       {', '.join(info.tags)}")
    print(f"  triggers   {', '.join(info.trained_words) or '-'}")
    where = info.local_path or (f"hf://{info.hf_repo}/{info.hf_file or ''}" if info.hf_repo else info.download_url)
    print(f"  weights    {where}")
    for f in info.files:
        print(f"  file       {f.name} ({f.format}, {f.size_kb or 0:.0f} KB) sha256 {f.sha256 or '-'}")
    if info.recommended:
        print(f"  recommended {json.dumps(info.recommended)}")
    if info.usage:
        u = info.usage
        top = lambda d: ", ".join(f"{k} ({n})" for k, n in sorted(d.items(), key=lambda x: -x[1])[:3])  # noqa: E731
        print(
            f"  usage      {u.n_images} images; samplers {top(u.samplers)}; steps {top(u.steps)}; "
            f"cfg {top(u.cfg_scale)}; sizes {top(u.sizes)}"
        )
    if info.description:
        print("\n" + info.description[:800])
    return 0


def register(subparsers) -> None:
    reg = add_group(subparsers, "registry", "manage and search the model registry")

    p = add_command(reg, "import", help="import Civitai models (item / API page .json, .jsonl(.gz) dump, or URL)")
    p.add_argument("source", help="file path or http(s) URL")
    p.add_argument("--no-vectors", action="store_true", help="skip sentence embeddings (lexical search only)")
    p.add_argument(
        "--holdout-split",
        nargs="*",
        choices=["train", "val", "test"],
        default=None,
        help="drop sample images of model pages in these benchmark splits (no test leakage)",
    )
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=cmd_import)

    p = add_command(
        reg,
        "scan",
        help="find the weights already on disk (A1111/Forge/ComfyUI model folders): match "
        "them to registry versions by hash, import unknown .safetensors as local models",
    )
    p.add_argument("folders", nargs="+", help="model folders or files, e.g. stable-diffusion-webui/models")
    p.add_argument("--no-import", action="store_true", help="only match files to registry versions")
    p.add_argument("--no-vectors", action="store_true", help="do not embed the imported models' cards")
    p.add_argument("--json", action="store_true")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=cmd_scan)

    p = add_command(reg, "sync", help="page the live Civitai API into the registry (needs network)")
    p.add_argument("--max-pages", type=int, default=10)
    p.add_argument("--types", nargs="*", default=["Checkpoint", "LORA", "TextualInversion"])
    p.add_argument("--query", default=None)
    p.add_argument("--nsfw", action="store_true", help="also fetch models flagged NSFW")
    p.add_argument("--base-url", default=None, help="API host (default: DIFFAGENT_CIVITAI_BASE_URL)")
    p.add_argument("--no-vectors", action="store_true")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=cmd_sync)

    p = add_command(reg, "build-default", help="rebuild the registry from the curated default_models.toml")
    p.add_argument("--source", default=None, help="curated TOML (default: the packaged one)")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=cmd_build_default)

    p = add_command(
        reg,
        "copy",
        help="copy a registry, vectors included, between SQLite files and PostgreSQL "
        "databases (into a new file or an empty database)",
    )
    p.add_argument("source", type=_location, help="a SQLite file or a postgresql:// URL")
    p.add_argument("dest", type=_location, help="a new SQLite file or a postgresql:// URL of an empty database")
    p.add_argument("--json", action="store_true")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=cmd_copy)

    p = add_command(reg, "search", help="hybrid lexical + semantic search")
    p.add_argument("query")
    p.add_argument("--type", nargs="*", default=None, help="checkpoint, lora, embedding, vae")
    p.add_argument("--base", default="any", help="any, sd15, sdxl, flux or sd3")
    p.add_argument("--min-downloads", type=int, default=0)
    p.add_argument("--limit", type=int, default=10)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_search)

    p = add_command(reg, "stats", help="counts by type and family")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_stats)

    p = add_command(reg, "show", help="everything about one model version")
    p.add_argument("id", type=int)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_show)
