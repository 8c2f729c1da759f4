"""The one exception type for user mistakes, so every command can print one line and exit."""

from __future__ import annotations

EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_FAILED = 3  # the work itself failed: an LLM after retries, a training run that diverged
EXIT_LLM_FAILURE = EXIT_FAILED
EXIT_INTERNAL = 70  # a bug, not a user mistake (EX_SOFTWARE); `--debug` shows the traceback


class UserError(Exception):
    """A mistake the user can fix: shown as one line, never as a traceback."""

    def __init__(self, message: str, exit_code: int = EXIT_BAD_INPUT) -> None:
        super().__init__(message)
        self.exit_code = exit_code
