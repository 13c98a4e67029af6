"""`wig` command line: tiny twins, concept preparation, class images, fine-tuning, guided sampling,
embeddings, study plans, the user study. One module per command (`wig.cli.commands`), what they
share in `wig.cli.options`.

Arguments are checked by argparse and each command's ``check`` before torch and diffusers are
imported (6-12 s): a wrong argument is refused at once.
"""

from __future__ import annotations

import argparse
import sys
from types import ModuleType

from wig.errors import WigError


def command_modules() -> dict[str, ModuleType]:
    """The command modules by name, in ``wig --help`` order."""
    import wig.cli.commands as package

    modules = [m for name, m in vars(package).items() if isinstance(m, ModuleType) and hasattr(m, "NAME")]
    return {m.NAME: m for m in sorted(modules, key=lambda m: (m.ORDER, m.NAME))}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wig",
        description="Personalization guidance for text-to-image diffusion models (PG, CFG, AG, CFG++).",
    )
    parser.add_argument("--version", action=_Version, nargs=0, help="show wig's version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in command_modules().values():
        try:
            command.add_parser(sub)
        except ImportError as err:
            # a command of an extra that is not installed (its parser reads that extra's registries):
            # listed, and refused in one line when asked for (`main`)
            if not getattr(command, "EXTRA", None) or command.NAME in sub.choices:
                raise
            sub.add_parser(command.NAME, help=f"(needs wig[{command.EXTRA}]: {err.name} is not installed)")
    return parser


class _Version(argparse.Action):
    """``--version``, its version read only when asked (importlib.metadata costs start-up time)."""

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"{parser.prog} {_version()}")
        parser.exit()


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("wig")
    except metadata.PackageNotFoundError:  # a source tree on the path, not installed
        return "unknown"


def _command_named(argv: list[str]) -> ModuleType | None:
    """The command module ``argv`` asks for (its first word that is not an option), or None."""
    commands = command_modules()
    first = next((word for word in argv if not word.startswith("-")), None)
    return commands.get(first)


def main(argv: list[str] | None = None) -> int:
    try:
        parser = build_parser()  # reads the registries: a broken plug-in package stops here
    except WigError as err:
        print(f"wig: error: {err}", file=sys.stderr)
        return 1
    named = _command_named(sys.argv[1:] if argv is None else argv)
    if named is not None and getattr(named, "EXTRA", None):
        from wig.extras import MissingExtra, require

        try:  # before argparse, so `wig serve-study --help` says it too
            require(named.EXTRA, f"wig {named.NAME}")
        except MissingExtra as err:
            print(f"wig: error: {err}", file=sys.stderr)
            return 1
    args = parser.parse_args(argv)
    command = command_modules()[args.command]
    try:
        if hasattr(command, "check"):
            command.check(args)
    except WigError as err:
        print(f"wig {args.command}: error: {err}", file=sys.stderr)
        return 1
    if not getattr(command, "LIGHT", False):
        # library chatter (loading bars, "no text-encoder LoRA keys" notes) would bury our one-line
        # errors and the sampling progress bar
        from diffusers.utils import logging as dlog
        from transformers.utils import logging as tlog

        for log in (dlog, tlog):
            log.set_verbosity(log.CRITICAL)
            log.disable_progress_bar()
    try:
        command.run(args)
    except WigError as err:
        print(f"wig {args.command}: error: {err}", file=sys.stderr)
        return 1
    return 0
