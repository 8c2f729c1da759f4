"""Running a typer app so that user mistakes end in one line on stderr and a chosen exit code."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import Annotated

import typer
from rich.console import Console

from pipeline.errors import UserError

stderr = Console(stderr=True, highlight=False, soft_wrap=True)


def package_version() -> str:
    """The installed intclip's version, as both CLIs report it."""
    try:
        return version("intclip")
    except PackageNotFoundError:
        return "unknown (not installed; run from a checkout)"


def _show_version(value: bool) -> None:
    if value:
        print(f"intclip {package_version()}")
        raise typer.Exit()


VersionOption = Annotated[
    bool | None,
    typer.Option(
        "--version", callback=_show_version, is_eager=True, help="Show the version and exit."
    ),
]


def fail(message: str) -> None:
    """Print one error line on stderr."""
    stderr.print(f"error: {message}", markup=False)


def run_app(app: typer.Typer, argv: Sequence[str] | None, prog_name: str) -> None:
    """Invoke `app`: a `UserError` becomes `error: ...` lines and its exit code, not a traceback.

    Ctrl-C ends the command with exit code 130 (typer's own handling), after every `with`
    block on the way out has cleaned up.
    """
    try:
        app(args=list(argv) if argv is not None else None, prog_name=prog_name)
    except UserError as err:
        for line in str(err).splitlines():
            fail(line)
        sys.exit(err.exit_code)
