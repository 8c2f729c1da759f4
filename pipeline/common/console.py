"""Running a typer app so that user mistakes end in one line on stderr and a chosen exit code.

Every command of both CLIs goes through `run_app`: a `UserError` prints its lines and exits
with its code; a usage mistake that click finds (an unknown option, a missing argument, a bad
value) is one `error:` line and exit 2, not click's usage box; anything else is a bug, shown as
one line that names the command and exits 70, unless `--debug` (anywhere before `--`) asks for
the traceback.
"""

from __future__ import annotations

import atexit
import gc
import math
import sys
import traceback
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console

from pipeline.common.errors import EXIT_BAD_INPUT, EXIT_INTERNAL, UserError
from pipeline.common.text import escape_controls


class SafeConsole(Console):
    """A console that shows control characters in the strings it prints as escapes: file
    names, taxonomy names and server replies reach messages, and an escape sequence in one
    would rewrite the terminal. Newlines and tabs are kept; rich renderables pass unchanged."""

    def print(self, *objects: Any, **kwargs: Any) -> None:
        shown = (escape_controls(o, keep_layout=True) if isinstance(o, str) else o for o in objects)
        super().print(*shown, **kwargs)


stderr = SafeConsole(stderr=True, highlight=False, soft_wrap=True)
stdout = SafeConsole(highlight=False, soft_wrap=True)
DEBUG_FLAG = "--debug"


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


def finite(value: float | None) -> float | None:
    """The callback of every float option that no pydantic model checks: `nan` passes every
    comparison (so every min and max), and `inf` means nothing as a setting."""
    if value is not None and not math.isfinite(value):
        raise typer.BadParameter(f"{value} is not a finite number")
    return value


def fail(message: str) -> None:
    """Print one error line on stderr, every control character in it escaped."""
    stderr.print(f"error: {escape_controls(message)}", markup=False)


def run_app(app: typer.Typer, argv: Sequence[str] | None, prog_name: str) -> None:
    """Invoke `app`: a `UserError` or a usage mistake becomes `error: ...` lines and its exit
    code, not a traceback; any other exception becomes one line and exit 70 (the traceback with
    `--debug`).

    Ctrl-C ends the command with exit code 130 (typer's own handling), after every `with`
    block on the way out has cleaned up.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    args, debug = _without_debug_flag(args)
    _skip_the_last_collection()
    try:
        _refuse_nul_bytes(args)
        # Not standalone: click's usage errors come here instead of printing a usage box.
        code = app(args=args, prog_name=prog_name, standalone_mode=False)
    except typer.TyperException as err:
        _usage_error(err, " ".join([prog_name, *_command_path(app, args)]))
    except typer.Abort:
        fail("aborted: the input ended (end of file) while a command was reading it")
        sys.exit(1)
    except UserError as err:
        for line in str(err).split("\n"):  # only newlines part the lines of a message
            fail(line)
        sys.exit(err.exit_code)
    except Exception as err:
        if debug:
            traceback.print_exc()
        command = " ".join([prog_name, *_command_path(app, args)])
        detail = " ".join(str(err).split())[:300]
        fail(
            f"{command} failed unexpectedly ({type(err).__name__}{': ' if detail else ''}"
            f"{detail}); this is a bug: rerun with {DEBUG_FLAG} for the traceback"
        )
        sys.exit(EXIT_INTERNAL)
    sys.exit(code if isinstance(code, int) else 0)  # typer.Exit's code, or 0 when done


def _skip_the_last_collection() -> None:
    """At exit, Python collects garbage once more before freeing every module's objects one by
    one anyway; after `build` imported openai (thousands of pydantic models) that collection
    alone takes about 0.1 s of CPU. Freezing the survivors at exit skips it: files are closed
    and `with` blocks have ended long before. Registered once per process."""
    atexit.unregister(gc.freeze)
    atexit.register(gc.freeze)


def _usage_error(err: typer.TyperException, command: str) -> NoReturn:
    """Click's own errors (typer re-exports click as `typer._click`, hence the duck typing): one
    line and their exit code (2 for usage), with a hint at the command's `--help` on that line
    (`command` is the one the words name, for errors that carry no context). `no_args_is_help`
    has already printed the help when it raises."""
    if type(err).__name__ != "NoArgsIsHelpError":
        context = getattr(err, "ctx", None)
        command = context.command_path if context is not None else command
        fail(f"{' '.join(err.format_message().split())} (see '{command} --help')")
    sys.exit(err.exit_code)


def _refuse_nul_bytes(args: list[str]) -> None:
    """No shell can pass a NUL byte, but the Python API can: refuse it before any command sees
    it, naming the option it was given to."""
    for index, arg in enumerate(args):
        if "\0" not in arg:
            continue
        option, equals, _ = arg.partition("=")
        if not (equals and option.startswith("--")):
            previous = args[index - 1] if index else ""
            option = previous if previous.startswith("-") and previous != "--" else ""
        where = f"'{option}'" if option else f"argument {arg!r}"
        raise UserError(f"Invalid value for {where}: contains a NUL byte", EXIT_BAD_INPUT)


def _without_debug_flag(args: list[str]) -> tuple[list[str], bool]:
    """`--debug` is a flag of every command, taken out before typer parses the rest."""
    end = args.index("--") if "--" in args else len(args)
    kept = [arg for arg in args[:end] if arg != DEBUG_FLAG] + args[end:]
    return kept, len(kept) != len(args)


def _command_path(app: typer.Typer, args: list[str]) -> list[str]:
    """The (sub)command words at the start of `args`, e.g. ['cache', 'verify']."""
    command = typer.main.get_command(app)
    words = []
    for arg in args:
        sub = command.get_command(typer.Context(command), arg) if _is_group(command) else None
        if sub is None:
            break
        words.append(arg)
        command = sub
    return words


def _is_group(command: object) -> bool:
    """Typer carries its own copy of click, so a group is known by its methods, not its class."""
    return callable(getattr(command, "get_command", None))
