"""The ``zsm`` command. Each subcommand lives in its own module with
``register(subparsers)``; handlers parse, call the public API, and return an
exit code. Errors a user can cause (:class:`zsm.ZSMError`) print one line and
exit 2; ``--debug`` shows the traceback instead. Ctrl-C (exit 130) and SIGTERM
(exit 143) unwind like an exception, so every command removes its temporary files
and leaves nothing under its output names.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from typing import NoReturn

from zsm import __version__

# Subcommand modules, in the order `zsm --help` lists them.
SUBCOMMANDS = ("demo", "upscale", "ui", "evaluate", "train", "benchmark", "convert_weights", "info")


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, as every other failure's: the cause
    and where to read the usage, instead of the usage itself (exit status 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="zsm",
        description="One-stage space-time video super-resolution (Zooming Slow-Mo): "
        "4x larger, 2x higher frame rate.",
    )
    parser.add_argument("--version", action="version", version=f"zsm {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"zsm.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"zsm.cli.{name}":
                continue  # subcommand not part of this build
            raise
        module.register(sub)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is, so that cleanup code runs as for Ctrl-C."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated()


@contextlib.contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """Turn SIGTERM into :class:`Terminated` while a command runs (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from zsm.errors import ZSMError

    try:
        with _sigterm_unwinds():
            return int(args.func(args) or 0)
    except ZSMError as exc:
        if args.debug:
            raise
        print(_one_line(f"zsm: error: {exc}", exc), file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        if args.debug:
            raise
        terminated = isinstance(exc, Terminated)
        what = "terminated (SIGTERM)" if terminated else "interrupted"
        print(_one_line(f"zsm: {what}", exc), file=sys.stderr)
        return 143 if terminated else 130


def _one_line(message: str, exc: BaseException) -> str:
    """``message`` and the exception's notes (what was kept, how to resume) on one line."""
    return "; ".join([message, *getattr(exc, "__notes__", ())]).replace("\n", " ")


def entry() -> None:  # pragma: no cover - console script wrapper
    sys.exit(main())
