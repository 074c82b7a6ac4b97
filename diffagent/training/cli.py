"""``diffagent train ...``: data, sft, rrhf, export, eval (see ``diffagent.training.pipeline``) and
ranker (``diffagent.training.ranker``)."""

from __future__ import annotations

import json
from pathlib import Path

from diffagent.bench.split import PAGES
from diffagent.cli import add_command, add_group
from diffagent.settings import Settings


def _config(args):
    """The config file, with the command's flags on top (validated again, so flags obey its bounds)."""
    from diffagent.training.config import TrainConfig, load_config

    raw = load_config(args.config).model_dump()
    for key in ("work_dir", "seed", "device"):
        if getattr(args, key, None) is not None:
            raw[key] = getattr(args, key)
    for key in ("pairs", "limit"):
        if getattr(args, key, None) is not None:
            raw["data"][key] = getattr(args, key)
    if getattr(args, "max_steps", None) is not None:
        raw[args.train_command]["max_steps"] = args.max_steps
    return TrainConfig.model_validate(raw)


def _print(result: dict) -> int:
    print(json.dumps({k: v for k, v in result.items() if k != "config"}, indent=2))
    return 0


def cmd_data(args, settings: Settings) -> int:
    from diffagent.training.pipeline import run_data

    return _print(run_data(_config(args), settings, progress=not args.quiet))


def cmd_sft(args, settings: Settings) -> int:
    from diffagent.training.pipeline import run_sft

    return _print(run_sft(_config(args), settings, progress=not args.quiet))


def cmd_rrhf(args, settings: Settings) -> int:
    from diffagent.training.pipeline import run_rrhf

    return _print(run_rrhf(_config(args), settings, progress=not args.quiet))


def cmd_export(args, settings: Settings) -> int:
    from diffagent.training.pipeline import run_export

    return _print(run_export(_config(args), settings, args.stage, out=args.out, merged=args.merged))


def cmd_eval(args, settings: Settings) -> int:
    from diffagent.training.pipeline import run_eval

    return _print(
        run_eval(
            _config(args),
            settings,
            args.model,
            split=args.split,
            limit=args.n,
            shuffle=args.shuffle,
            progress=not args.quiet,
        )
    )


def cmd_ranker(args, settings: Settings) -> int:
    from diffagent.agent.cards import CardEncoder, load_setting
    from diffagent.registry.store import Registry
    from diffagent.training.ranker import train_ranker

    registry = Registry.from_settings(settings)
    work = args.work_dir or settings.data_dir / "training" / "ranker"
    out = args.out or work / "ranker.json"
    folds = [CardEncoder.load(path) for path in args.card_encoder or []]
    card_val = load_setting(settings.card_adapter) if folds else None
    return _print(
        train_ranker(
            registry,
            args.pairs,
            out,
            work_dir=work,
            limit=args.limit,
            val_limit=args.val_limit,
            seed=args.seed or 0,
            max_iter=args.trees,
            progress=not args.quiet,
            card_folds=folds,
            card_val=card_val,
        )
    )


def cmd_cards(args, settings: Settings) -> int:
    from diffagent.registry.store import Registry
    from diffagent.training.cards import CardsConfig, results_table, train_cards

    registry = Registry.from_settings(settings)
    work = args.work_dir or settings.data_dir / "training" / "cards"
    out = args.out or work / "card_encoder.npz"
    cfg = CardsConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        per_page=args.per_page,
        seed=args.seed or 0,
        device=args.device or "cpu",
        pages=args.pages,
        max_length=args.max_length,
        towers=args.towers,
        cards_per_step=args.cards_per_step,
        card_length=args.card_length,
        hard_negatives=args.hard_negatives,
        refresh_every=args.refresh_every,
        lora_prompts=args.lora_prompts,
    )
    meta = train_cards(
        registry, args.pairs, out, work_dir=work, cfg=cfg, eval_limit=args.eval_limit, progress=not args.quiet
    )
    print(results_table(meta))
    print(f"wrote {out} ({meta['seconds']} s of training; final loss {meta['final_loss']})")
    return 0


def cmd_cardlm(args, settings: Settings) -> int:
    from diffagent.training.cardlm import CardLMConfig, run_cardlm

    cfg = CardLMConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        negatives=args.negatives,
        contrast_weight=args.contrast_weight,
        device=args.device or "cpu",
        card_chars=args.card_chars,
    )
    report = run_cardlm(
        settings,
        args.pairs,
        args.work_dir or settings.data_dir / "training" / "cardlm",
        cfg=cfg,
        per_page=args.per_page,
        train_limit=args.train_limit,
        eval_split=args.split,
        eval_limit=args.eval_limit,
        threads=args.threads,
        init_adapter=args.init_adapter,
        progress=not args.quiet,
    )
    return _print(report)


def register(subparsers) -> None:
    train = add_group(
        subparsers, "train", "train the DiffAgent selector LLM (data, SFT, RRHF, GGUF export) and the checkpoint ranker"
    )

    def common(p):
        p.add_argument("--config", type=Path, default=None, help="training config (.toml or .json)")
        p.add_argument(
            "--work-dir", type=Path, default=None, help="default: work_dir of the config, else <data_dir>/training"
        )
        p.add_argument("--seed", type=int, default=None)
        p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = add_command(train, "data", help="build the training examples (retrieval + prompt, resumable)")
    common(p)
    p.add_argument("--pairs", type=Path, default=None, help="pairs from `diffagent bench build`")
    p.add_argument("--limit", type=int, default=None, help="pairs to use (a seeded sample)")
    p.set_defaults(func=cmd_data)

    def device(p):
        p.add_argument("--device", default=None, help="cpu (default), or cuda on a GPU machine (docs/training-gpu.md)")

    p = add_command(train, "sft", help="stage 1: LoRA supervised fine-tuning (resumable)")
    common(p)
    device(p)
    p.add_argument("--limit", type=int, default=None, help="use the first N built examples")
    p.add_argument("--max-steps", type=int, default=None)
    p.set_defaults(func=cmd_sft)

    p = add_command(train, "rrhf", help="stage 2: RRHF ranking on scored candidates (resumable)")
    common(p)
    device(p)
    p.add_argument("--limit", type=int, default=None, help="use the first N built examples")
    p.add_argument("--max-steps", type=int, default=None)
    p.set_defaults(func=cmd_rrhf)

    p = add_command(train, "export", help="adapter -> GGUF for llama.cpp (DIFFAGENT_LLM_LORA)")
    common(p)
    p.add_argument("--stage", choices=["sft", "rrhf"], default="rrhf")
    p.add_argument("--out", type=Path, default=None, help="default: <work_dir>/<stage>/adapter.gguf")
    p.add_argument(
        "--merged",
        action="store_true",
        help="merge the adapter into the base and export the whole model instead (a ~300 MB-1 GB GGUF)",
    )
    p.set_defaults(func=cmd_export)

    p = add_command(train, "eval", help="the model's own choice on held-out pairs (accuracy, LoRA F1, mismatches)")
    common(p)
    p.add_argument("--model", choices=["base", "sft", "rrhf"], default="rrhf")
    p.add_argument("--split", choices=["val", "test"], default="test")
    p.add_argument("--n", type=int, default=300, help="held-out pairs (a seeded sample)")
    p.add_argument(
        "--shuffle",
        type=float,
        default=0.0,
        metavar="SHARE",
        help="show this share of the examples with their candidates in a random order; 1.0 is the "
        "position-free probe (label_nll against uniform_nll)",
    )
    p.add_argument("--pairs", type=Path, default=None)
    p.set_defaults(func=cmd_eval)

    p = add_command(train, "ranker", help="fit the checkpoint ranker on creators' choices (DIFFAGENT_RANKER)")
    p.add_argument("--pairs", type=Path, required=True, help="pairs from `diffagent bench build`")
    p.add_argument("--out", type=Path, default=None, help="default: <work_dir>/ranker.json")
    p.add_argument("--work-dir", type=Path, default=None, help="feature cache; default <data_dir>/training/ranker")
    p.add_argument("--limit", type=int, default=14000, help="train pairs (a seeded sample), per card encoder")
    p.add_argument("--val-limit", type=int, default=2000, help="val pairs for the report")
    p.add_argument("--trees", type=int, default=200)
    p.add_argument(
        "--card-encoder",
        type=Path,
        action="append",
        help="a card encoder trained on half of the train pages (`train cards --pages even`; give the "
        "other half's too): it gives the card feature of --limit pairs of the half it never saw; val pairs "
        "use DIFFAGENT_CARD_ADAPTER. Without one the card feature is 0",
    )
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_ranker)

    p = add_command(
        train,
        "cards",
        help="fine-tune the card encoder: requests -> the model cards creators chose "
        "(resumable; DIFFAGENT_CARD_ADAPTER)",
    )
    p.add_argument("--pairs", type=Path, required=True, help="pairs from `diffagent bench build`")
    p.add_argument("--out", type=Path, default=None, help="default: <work_dir>/card_encoder.npz")
    p.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        help="checkpoints (a rerun resumes) and vector cache; default <data_dir>/training/cards",
    )
    p.add_argument("--per-page", type=int, default=15, help="most train prompts per model page")
    p.add_argument(
        "--pages",
        choices=PAGES,
        default="all",
        help="train pages used (one half: the encoder behind the ranker's card feature, see train ranker)",
    )
    p.add_argument("--steps", type=int, default=1200)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument(
        "--max-length",
        type=int,
        default=64,
        help="prompt tokens seen in training (requests are encoded with the embedder's 128)",
    )
    p.add_argument(
        "--towers",
        choices=("query", "both"),
        default="query",
        help="query: adapt requests to the stock card vectors; both: cards read by the same adapted encoder "
        "(reaches models no creator chose; the registry's cards are encoded again and cached)",
    )
    p.add_argument("--cards-per-step", type=int, default=64, help="--towers both: cards a step")
    p.add_argument("--card-length", type=int, default=96, help="--towers both: card tokens seen in training")
    p.add_argument(
        "--hard-negatives",
        type=int,
        default=0,
        help="--towers both: per prompt, the nearest chosen cards of other pages under the encoder being trained "
        "join the step's cards (0: random cards only)",
    )
    p.add_argument(
        "--refresh-every", type=int, default=50, help="--hard-negatives: steps between re-encoding the card bank"
    )
    p.add_argument(
        "--lora-prompts",
        type=int,
        default=0,
        help="--towers both: per step, that many more train prompts paired with the card of a LoRA their creator "
        "used (more distinct cards for the card tower to learn from; 0: checkpoint cards only)",
    )
    device(p)
    p.add_argument("--eval-limit", type=int, default=2000, help="val/test pairs for the report")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=cmd_cards)

    p = add_command(
        train,
        "cardlm",
        help="the LLM as a conditional language model of creators' prompts given a "
        "model card: evaluate, train (resumable), evaluate",
    )
    p.add_argument("--pairs", type=Path, required=True, help="pairs from `diffagent bench build`")
    p.add_argument("--work-dir", type=Path, default=None, help="default <data_dir>/training/cardlm")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument(
        "--negatives",
        type=int,
        default=0,
        help="hard negative cards per pair for the contrastive term (0: language-model loss only)",
    )
    p.add_argument("--contrast-weight", type=float, default=1.0, help="weight of the contrastive term")
    p.add_argument(
        "--card-chars",
        type=int,
        default=600,
        help="characters of each card the model reads (160: name, tags, trigger words; about 40 tokens)",
    )
    p.add_argument(
        "--init-adapter",
        type=Path,
        default=None,
        help="start from this adapter (an earlier run's <work-dir>/train/adapter) instead of a fresh LoRA",
    )
    p.add_argument("--per-page", type=int, default=3, help="most train prompts per model page")
    p.add_argument("--train-limit", type=int, default=20000, help="train pairs at most (a seeded sample)")
    p.add_argument("--split", choices=["val", "test"], default="val", help="held-out pairs to evaluate on")
    p.add_argument("--eval-limit", type=int, default=150, help="held-out pairs whose checkpoint is shortlisted")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared 2-core box)")
    device(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_cardlm)
