"""The ``diffagent`` command line. Each package registers its own subcommands; this module only
builds the parser, turns flags into ``Settings`` and prints user errors without tracebacks."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from diffagent import __version__
from diffagent.errors import DiffAgentError
from diffagent.settings import Settings


def _registry_arg(value: str):
    from diffagent.registry.location import parse_location

    try:
        return parse_location(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


#: modules with a ``register(subparsers)`` function, in help order; missing optional ones are skipped
COMMAND_MODULES = [
    "diffagent.agent.cli",
    "diffagent.registry.cli",
    "diffagent.render.cli",
    "diffagent.bench.cli",
    "diffagent.scoring.cli",
    "diffagent.training.cli",
    "diffagent.server.cli",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="diffagent",
        description="Pick a Stable Diffusion checkpoint, LoRAs and settings for a prompt, and render it.",
    )
    parser.add_argument("--version", action="version", version=f"diffagent {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="log more (to stderr)")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--registry",
        type=_registry_arg,
        default=argparse.SUPPRESS,
        help="registry: a SQLite file or a postgresql:// URL (default: DIFFAGENT_REGISTRY or the "
        "checkout's registry.db)",
    )
    common.add_argument(
        "--allow-nsfw",
        action="store_true",
        default=argparse.SUPPRESS,
        help="include NSFW models (default: DIFFAGENT_ALLOW_NSFW or off)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    # every subcommand inherits the common options
    sub.common_parent = common  # type: ignore[attr-defined]
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            # that part of diffagent, or an optional extra it needs (render, score, train), is not installed
            if e.name and (name.startswith(e.name) or not e.name.startswith("diffagent")):
                logging.getLogger(__name__).debug("skipping %s commands: %s", name, e)
                continue
            raise
        module.register(sub)
    return parser


def settings_from_args(args: argparse.Namespace) -> Settings:
    overrides = {}
    if getattr(args, "registry", None) is not None:
        overrides["registry"] = args.registry
    if getattr(args, "allow_nsfw", False):
        overrides["allow_nsfw"] = True
    return Settings(**overrides)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose, 2),
        stream=sys.stderr,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        settings = settings_from_args(args)
        return int(args.func(args, settings) or 0)
    except DiffAgentError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def add_command(subparsers, name: str, **kwargs) -> argparse.ArgumentParser:
    """Add a subcommand that accepts the common options (--registry, --allow-nsfw)."""
    parents = [subparsers.common_parent] if hasattr(subparsers, "common_parent") else []
    return subparsers.add_parser(name, parents=parents, **kwargs)


def add_group(subparsers, name: str, help: str):
    """A subcommand with its own subcommands (``diffagent registry import``); returns their subparsers."""
    group = subparsers.add_parser(name, help=help, description=help)
    nested = group.add_subparsers(dest=f"{name}_command", metavar="COMMAND")
    nested.required = True
    if hasattr(subparsers, "common_parent"):
        nested.common_parent = subparsers.common_parent
    return nested
