"""Exit codes shared by every command (BSD sysexits, as the BIDS Apps execution spec uses)."""

EX_OK = 0
#: A synthesis job crashed (crash files under output_dir/sub-XX/log).
EX_FAILURE = 1
#: The input BIDS dataset does not pass validation.
EX_INVALID_DATASET = 16
#: Wrong command-line usage.
EX_USAGE = 64
#: Input data exists but is not usable (bad image, prompt too long, corrupt checkpoint).
EX_DATAERR = 65
#: An input file does not exist, or the selection matched nothing.
EX_NOINPUT = 66
#: An internal error.
EX_SOFTWARE = 70
#: An output file or folder cannot be created.
EX_CANTCREAT = 73


class CLIError(Exception):
    """A failure the user can fix; carries the exit code (one of the above)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
