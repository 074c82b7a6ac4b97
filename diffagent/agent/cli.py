"""``diffagent select "prompt"``: print the chosen text-to-image call (table or JSON)."""

from __future__ import annotations

import json
import sys
from typing import get_args

from diffagent.agent.options import Base
from diffagent.cli import add_command
from diffagent.settings import Settings


def cmd_select(args, settings: Settings) -> int:
    from diffagent.tools import SelectOptions, get_runtime

    if args.retrieval_only:
        settings = settings.model_copy(update={"selector": "retrieval"})
    options = SelectOptions(
        base=args.base,
        max_loras=args.max_loras,
        style=args.style,
        seed=args.seed,
        n_candidates=args.n,
        strategy=args.strategy,
        temperature=args.temperature,
    )
    selection = get_runtime(settings).selector.select_many(args.prompt, options)
    if args.json:
        out = [c.model_dump(mode="json") for c in selection.calls]
        print(json.dumps(out[0] if args.n == 1 else out, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    console = Console()
    for rank, call in enumerate(selection.calls, 1):
        table = Table(title=f"#{rank}  {call.checkpoint.name}", show_header=False, title_justify="left")
        table.add_column("field", style="bold")
        table.add_column("value", overflow="fold")
        table.add_row("checkpoint", f"{call.checkpoint.name} [{call.checkpoint.family}] id {call.checkpoint.id}")
        table.add_row("AIR", call.checkpoint.air)
        for lo in call.loras:
            table.add_row("LoRA", f"{lo.name} x{lo.weight:g} (id {lo.id})")
        for em in call.embeddings:
            table.add_row("embedding", f"{em.token} ({'negative' if em.negative else 'positive'}, id {em.id})")
        table.add_row("prompt", call.prompt)
        table.add_row("negative", call.negative_prompt)
        table.add_row("sampler", f"{call.sampler}, {call.steps} steps, CFG {call.cfg_scale:g}")
        table.add_row("size", f"{call.width}x{call.height}, clip skip {call.clip_skip}, seed {call.seed}")
        table.add_row("why", call.rationale)
        console.print(table)
    alts = selection.calls[0].alternatives
    if alts:
        console.print("alternatives: " + "; ".join(f"{a.checkpoint.name} ({a.score:.2f})" for a in alts))
    ms = {k: f"{v * 1000:.0f} ms" for k, v in selection.timings.items()}
    print(f"selector={settings.selector} timings: {ms}", file=sys.stderr)
    return 0


def cmd_schema(args, settings: Settings) -> int:
    from diffagent.apicall import api_call_json_schema

    print(json.dumps(api_call_json_schema(), indent=2))
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("schema", help="print the ApiCall JSON schema (version 1)")
    p.set_defaults(func=cmd_schema)

    p = add_command(subparsers, "select", help="choose checkpoint, LoRAs and settings for a prompt")
    p.add_argument("prompt")
    p.add_argument("--base", default="any", choices=list(get_args(Base)))
    p.add_argument("--max-loras", type=int, default=2)
    p.add_argument("--style", default=None, help="style hint, e.g. anime, photo, watercolor")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--n", type=int, default=1, help="number of ranked calls to print")
    p.add_argument("--strategy", default="rank", choices=["rank", "beam", "sample"])
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--retrieval-only", action="store_true", help="skip the LLM (baseline / fallback)")
    p.add_argument("--json", action="store_true", help="print the ApiCall JSON")
    p.set_defaults(func=cmd_select)
