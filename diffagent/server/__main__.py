"""``python -m diffagent.server [--http ...]``: the same as ``diffagent serve``."""

import argparse
import sys

from diffagent.server.cli import register
from diffagent.settings import Settings

parser = argparse.ArgumentParser(prog="python -m diffagent.server")
register(parser.add_subparsers(dest="command"))
args = parser.parse_args(["serve", *sys.argv[1:]])
raise SystemExit(args.func(args, Settings()))
