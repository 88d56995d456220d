"""The `facekd` entry point: discovers the subcommands in `facekd.commands`."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

import facekd
import facekd.commands
from facekd.errors import FacekdError
from facekd.logs import configure_console


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="facekd",
        description="Knowledge distillation for face-recognition networks.",
    )
    parser.add_argument("--version", action="version", version=f"facekd {facekd.__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(facekd.commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"facekd.commands.{info.name}")
        sub = subparsers.add_parser(info.name, help=module.HELP, description=module.__doc__)
        module.add_arguments(sub)
        sub.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_console()
    try:
        return int(args.run(args) or 0)
    except FacekdError as exc:
        print(f"facekd {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"facekd {args.command}: interrupted", file=sys.stderr)
        return 130
