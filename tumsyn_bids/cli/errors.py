"""The CLI's error type; the exit codes themselves live in :mod:`tumsyn_bids.exitcodes`."""

from ..exitcodes import (  # noqa: F401 (re-exported: the commands use errors.EX_*)
    EX_CANTCREAT,
    EX_DATAERR,
    EX_FAILURE,
    EX_INVALID_DATASET,
    EX_NOINPUT,
    EX_OK,
    EX_SOFTWARE,
    EX_USAGE,
)


class CLIError(Exception):
    """A failure the user can fix; carries the exit code (one of the above)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
