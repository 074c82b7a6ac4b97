"""``diffagent render --call call.json`` and ``diffagent generate "prompt"`` (select, then render)."""

from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path
from typing import get_args

from diffagent.agent.options import Base
from diffagent.errors import UserInputError
from diffagent.settings import Settings


def _add(subparsers, name: str, **kw) -> argparse.ArgumentParser:
    try:  # the main CLI's helper adds the common options (--registry, --allow-nsfw)
        from diffagent.cli import add_command
    except ImportError:
        return subparsers.add_parser(name, **kw)
    return add_command(subparsers, name, **kw)


def _render_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, default=None, help="output folder (default: <data_dir>/outputs)")
    p.add_argument("--device", default=None, help="'cuda', 'cuda:N', 'cpu' (default: DIFFAGENT_DEVICE or auto)")
    p.add_argument("--offline", action="store_true", help="never download weights; use cached/local files only")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def _settings(args: argparse.Namespace, settings: Settings) -> Settings:
    update = {}
    if args.device:
        update["device"] = args.device
    if args.offline:
        update["allow_downloads"] = False
    return settings.model_copy(update=update) if update else settings


def _progress_bar():
    """A tqdm bar on stderr, advanced by the renderer's per-step callback."""
    from tqdm.auto import tqdm

    state: dict = {}

    def progress(step: int, total: int) -> None:
        bar = state.get("bar")
        if bar is None:
            bar = state["bar"] = tqdm(total=total, desc="denoising", unit="step", file=sys.stderr, leave=False)
        bar.update(step - bar.n)

    def close() -> None:
        if "bar" in state:
            state["bar"].close()

    return progress, close


def _run(call, args: argparse.Namespace, settings: Settings) -> int:
    from diffagent.render.renderer import RenderCancelled, Renderer

    settings = _settings(args, settings)
    renderer = Renderer(settings)
    progress, close = _progress_bar()
    cancel = threading.Event()
    try:
        result = renderer.render(call, progress=progress, cancel=cancel, output_dir=args.out)
    except KeyboardInterrupt:
        cancel.set()
        raise RenderCancelled("render interrupted") from None
    finally:
        close()
        renderer.close()
    if args.json:
        print(result.model_dump_json(indent=2))
    else:
        note = "" if result.sampler_exact else f" (sampler {call.sampler!r} is approximated in diffusers)"
        print(
            f"{result.path}  {result.width}x{result.height} seed {result.seed} on {result.device} "
            f"in {result.seconds:.1f}s{note}"
        )
    return 0


def cmd_render(args: argparse.Namespace, settings: Settings) -> int:
    from pydantic import ValidationError

    from diffagent.apicall import ApiCall

    try:
        text = Path(args.call).read_text(encoding="utf-8") if args.call != "-" else sys.stdin.read()
    except OSError as e:
        raise UserInputError(f"cannot read the call file {args.call}: {e.strerror}") from e
    try:
        call = ApiCall.model_validate_json(text)
    except ValidationError as e:
        raise UserInputError(f"{args.call} is not a valid ApiCall (see `diffagent schema`):\n{e}") from e
    return _run(call, args, settings)


def cmd_generate(args: argparse.Namespace, settings: Settings) -> int:
    from diffagent.tools import SelectOptions, get_runtime, select_t2i_api

    options = SelectOptions(base=args.base, seed=args.seed, max_loras=args.max_loras, style=args.style)
    call = select_t2i_api(args.prompt, options, runtime=get_runtime(settings))
    print(
        f"selected {call.checkpoint.name} [{call.checkpoint.family}]"
        + "".join(f" + {lo.name}x{lo.weight:g}" for lo in call.loras)
        + f", {call.sampler}, {call.steps} steps, CFG {call.cfg_scale:g}, {call.width}x{call.height}",
        file=sys.stderr,
    )
    if args.save_call:
        args.save_call.write_text(call.model_dump_json(indent=2), encoding="utf-8")
    return _run(call, args, settings)


def register(subparsers) -> None:
    p = _add(
        subparsers,
        "render",
        help="render an ApiCall JSON file to a PNG",
        description="Render an ApiCall (from `diffagent select --json`) with diffusers. The PNG carries "
        "A1111 'parameters' metadata, so Civitai and A1111 can read it back.",
    )
    p.add_argument("--call", required=True, help="ApiCall JSON file ('-' reads stdin)")
    _render_options(p)
    p.set_defaults(func=cmd_render)

    g = _add(
        subparsers,
        "generate",
        help="select a model for a prompt and render it",
        description="Select a checkpoint, LoRAs and settings for the prompt, then render the image.",
    )
    g.add_argument("prompt")
    g.add_argument("--base", default="any", choices=list(get_args(Base)))
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--max-loras", type=int, default=2)
    g.add_argument("--style", default=None, help="style hint, e.g. anime, photo, watercolor")
    g.add_argument("--save-call", type=Path, default=None, help="also write the selected ApiCall JSON here")
    _render_options(g)
    g.set_defaults(func=cmd_generate)
