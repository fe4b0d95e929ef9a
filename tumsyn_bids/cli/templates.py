"""``tumsyn-templates``: prepare a TemplateFlow home for offline use.

``tumsyn-templates init [DIR]`` writes ``MNI152NLin2009aSym`` (the ICBM 2009a nonlinear
symmetric atlas, from the copy inside nilearn's wheel) into DIR in TemplateFlow's layout, so that
``--output-spaces`` works with no network. See docs/templates.md.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .. import __version__
from .errors import EX_OK


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tumsyn-templates",
        description="Prepare a TemplateFlow home for offline use (nothing is downloaded).",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    init = sub.add_parser(
        "init",
        help="write MNI152NLin2009aSym into a TemplateFlow home",
        description="Write the MNI152NLin2009aSym template (brain-only T1w, brain mask, GM and "
        "WM probability maps at 1 mm) into DIR in TemplateFlow's layout, from the ICBM 2009a "
        "symmetric atlas that nilearn ships. Checks every file against the checksums recorded "
        "in tumsyn-bids; never overwrites a file with other content (exit 73); rerunning is a "
        "no-op. Other templates in DIR are left alone.",
    )
    init.add_argument(
        "home",
        nargs="?",
        metavar="DIR",
        help="the TemplateFlow home (default: $TEMPLATEFLOW_HOME, else TemplateFlow's default "
        "cache folder)",
    )
    init.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Imported here so that --help does not pay for numpy and nibabel.
    from ..templates.flow import templateflow_home
    from ..templates.packaged import TemplateInitError, init_home

    home = args.home or templateflow_home()
    try:
        result = init_home(home)
    except TemplateInitError as exc:
        print(f"tumsyn-templates: error: {exc}", file=sys.stderr)
        return exc.exit_code
    if not args.quiet:
        state = f"wrote {len(result.written)} files" if result.written else "already complete"
        print(
            f"{result.template} in TemplateFlow home {result.home}: {state}, "
            f"{len(result.unchanged)} unchanged"
        )
        if str(result.home) != str(templateflow_home()):
            print(f"use it with: export TEMPLATEFLOW_HOME={result.home}")
    return EX_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
