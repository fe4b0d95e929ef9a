#!/usr/bin/env python3
"""How a participant-level run's start-up scales with the size of the dataset (issue 20 item 5).

Writes a synthetic BIDS dataset of N participants x 2 sessions x 2 images (T1w, T2w; tiny
8x8x8 volumes with full sidecars, ``participants.tsv`` and ``sessions.tsv``) and times, with
``tumsyn ... participant --dry-run`` (the part of a run before the workflow: validation, index,
plan), for each N:

* ``prepare``: ``--index-only --bids-database-dir DB`` (validates once and builds the shared
  index; what an array's preparation step costs);
* ``full``: the dry run of every participant without an index (``--skip-bids-validation``:
  validation is timed in ``prepare``), and ``full+db`` with the prebuilt index (validation
  reused);
* ``task``: one participant (the per-task overhead of an array) without an index (and without
  validation), and ``task+db`` with the prebuilt index and the recorded validation verdict: the
  number that must not grow with N.

Times are wall clock (seconds) with the peak resident memory of the ``tumsyn`` process (MB, from
``wait4``). ``task+db`` is the median of ``--repeats`` rounds measured round-robin over the sizes
after every dataset is prepared, so that a change of the machine's load affects all sizes
alike; the other cases run once. Timings on a shared machine are disturbed by other load:
compare the ratios of one run of this script.

Usage::

    python benchmarks/bench_scale.py --sizes 50 200 800 --repeats 5 --json scale.json
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

SIDECARS = {
    "T1w": {
        "RepetitionTime": 2.3,
        "EchoTime": 0.00298,
        "InversionTime": 0.9,
        "FlipAngle": 9,
        "MagneticFieldStrength": 3,
        "Manufacturer": "Siemens",
    },
    "T2w": {
        "RepetitionTime": 3.2,
        "EchoTime": 0.408,
        "FlipAngle": 120,
        "MagneticFieldStrength": 3,
        "Manufacturer": "Siemens",
    },
}


def _nifti_gz(seed: int) -> bytes:
    data = np.random.default_rng(seed).random((8, 8, 8), dtype=np.float32) * 100
    image = nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0]))
    return gzip.compress(image.to_bytes(), mtime=0)


def write_dataset(root: Path, n: int) -> Path:
    """N participants x sessions 1, 2 x (T1w, T2w), with sidecars and tables."""
    root.mkdir(parents=True)
    (root / "dataset_description.json").write_text(
        json.dumps({"Name": f"scale-{n}", "BIDSVersion": "1.10.0", "DatasetType": "raw"})
    )
    images = {suffix: _nifti_gz(i) for i, suffix in enumerate(SIDECARS)}
    rows = io.StringIO("participant_id\tage\tsex\n")
    rows.seek(0, io.SEEK_END)
    for i in range(1, n + 1):
        sub = f"sub-{i:04d}"
        rows.write(f"{sub}\t{20 + i % 60}\t{'MF'[i % 2]}\n")
        (root / sub).mkdir()
        (root / sub / f"{sub}_sessions.tsv").write_text(
            f"session_id\tage\nses-1\t{20 + i % 60}\nses-2\t{21 + i % 60}\n"
        )
        for ses in ("ses-1", "ses-2"):
            anat = root / sub / ses / "anat"
            anat.mkdir(parents=True)
            for suffix, sidecar in SIDECARS.items():
                stem = anat / f"{sub}_{ses}_{suffix}"
                stem.with_name(stem.name + ".nii.gz").write_bytes(images[suffix])
                stem.with_name(stem.name + ".json").write_text(json.dumps(sidecar))
    (root / "participants.tsv").write_text(rows.getvalue())
    return root


def _tumsyn() -> list[str]:
    script = Path(sys.executable).parent / "tumsyn"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "tumsyn_bids.cli.run"]


def timed(args: list[str], repeats: int) -> dict[str, float]:
    """Median wall time (s) and largest peak RSS (MB) of ``repeats`` runs of tumsyn ``args``."""
    seconds, peaks = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        proc = subprocess.Popen(
            _tumsyn() + args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        _, status, usage = os.wait4(proc.pid, 0)
        seconds.append(time.perf_counter() - started)
        stderr = proc.stderr.read()
        proc.stderr.close()
        code = os.waitstatus_to_exitcode(status)
        if code != 0:
            raise RuntimeError(f"tumsyn {' '.join(args)} exited {code}:\n{stderr[-3000:]}")
        peaks.append(usage.ru_maxrss / 1024)  # KB on Linux
    return {"seconds": round(statistics.median(seconds), 2), "peak_rss_mb": round(max(peaks))}


def prepare(n: int, workdir: Path) -> dict:
    """Write the dataset of size ``n`` and time everything but the per-task overhead."""
    base = workdir / f"n{n}"
    started = time.perf_counter()
    bids = write_dataset(base / "bids", n)
    written = time.perf_counter() - started
    out, db = base / "out", base / "db"
    common = [str(bids), str(out), "participant", "--dry-run", "-w", str(base / "work")]
    result = {"n": n, "images": 4 * n, "write_seconds": round(written, 1)}
    result["prepare"] = timed(
        [str(bids), str(out), "participant", "--index-only", "--bids-database-dir", str(db)], 1
    )
    result["full"] = timed([*common, "--skip-bids-validation"], 1)
    result["full+db"] = timed([*common, "--bids-database-dir", str(db)], 1)
    result["task"] = timed([*common, *_label(n), "--skip-bids-validation"], 1)
    result["db_mb"] = round((db / "layout_index.sqlite").stat().st_size / 2**20, 1)
    return result


def _label(n: int) -> list[str]:
    return ["--participant-label", f"{n // 2:04d}"]


def per_task(sizes: list[int], workdir: Path, repeats: int) -> dict[int, dict]:
    """The per-task overhead (one participant, prebuilt index, recorded verdict) of every size,
    measured round-robin (50, 200, 800, 50, ...) so that a change of the machine's load affects
    all sizes alike; the median of ``repeats`` rounds."""
    runs: dict[int, list[dict]] = {n: [] for n in sizes}
    for _ in range(repeats):
        for n in sizes:
            base = workdir / f"n{n}"
            args = [str(base / "bids"), str(base / "out"), "participant", "--dry-run",
                    "-w", str(base / "work"), *_label(n), "--bids-database-dir",
                    str(base / "db")]  # fmt: skip
            runs[n].append(timed(args, 1))
    return {
        n: {
            "seconds": round(statistics.median(r["seconds"] for r in rs), 2),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in rs),
            "all_seconds": [r["seconds"] for r in rs],
        }
        for n, rs in runs.items()
    }


def table(results: list[dict]) -> str:
    first = results[0]["task+db"]["seconds"]
    lines = [
        "| N | images | prepare: validate + index | full dry run | full dry run, prebuilt index "
        "| one participant | one participant, prebuilt index (per-task overhead) "
        "| x N=" + str(results[0]["n"]) + " | index size |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:

        def cell(key: str, r: dict = r) -> str:
            return f"{r[key]['seconds']:.1f} s ({r[key]['peak_rss_mb']} MB)"

        lines.append(
            f"| {r['n']} | {r['images']} | {cell('prepare')} | {cell('full')} | {cell('full+db')} "
            f"| {cell('task')} | {cell('task+db')} | {r['task+db']['seconds'] / first:.2f} "
            f"| {r['db_mb']} MB |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[50, 200, 800])
    parser.add_argument(
        "--repeats", type=int, default=5, help="rounds of the per-task measurement (median)"
    )
    parser.add_argument("--workdir", type=Path, help="keep the datasets here (default: temp)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="tumsyn-scale-"))
    results = []
    try:
        for n in args.sizes:
            results.append(prepare(n, workdir))
            print(json.dumps(results[-1]), file=sys.stderr, flush=True)
        tasks = per_task(args.sizes, workdir, args.repeats)
        for result in results:
            result["task+db"] = tasks[result["n"]]
        print(json.dumps(tasks), file=sys.stderr, flush=True)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
