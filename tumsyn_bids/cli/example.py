"""``tumsyn-example-data``: write the small synthetic example BIDS dataset.

The quick start needs input data that anyone can make offline in a second; this command writes
the dataset of :mod:`tumsyn_bids.data.example` (four tiny phantom images, two subjects).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .. import __version__
from .errors import EX_CANTCREAT, EX_OK


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tumsyn-example-data",
        description="Write a small synthetic BIDS dataset (brain-like phantoms, not real "
        "anatomy) to try tumsyn-bids on. The output is the same, byte for byte, on every run.",
    )
    p.add_argument("out_dir", metavar="OUT_DIR", help="folder to create (must be new or empty)")
    p.add_argument(
        "--force",
        action="store_true",
        help="write into OUT_DIR even if it is not empty, overwriting the example's files "
        "(other files there are kept)",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Imported here so that --help does not pay for numpy and nibabel.
    from ..data.example import write_example_dataset

    try:
        root = write_example_dataset(args.out_dir, force=args.force)
    except (FileExistsError, NotADirectoryError) as exc:
        print(f"tumsyn-example-data: error: {exc}", file=sys.stderr)
        return EX_CANTCREAT
    except OSError as exc:
        print(f"tumsyn-example-data: error: cannot write {args.out_dir}: {exc}", file=sys.stderr)
        return EX_CANTCREAT
    print(f"wrote the example BIDS dataset to {root}")
    return EX_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
