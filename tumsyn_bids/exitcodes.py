"""Exit codes shared by every command (BSD sysexits, as the BIDS Apps execution spec uses).

A module of its own, importing nothing, so that code below the CLI (e.g.
:mod:`tumsyn_bids.templates.packaged`) can name the status an error maps to."""

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
