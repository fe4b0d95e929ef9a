"""Group level: ``group_synthesis.tsv`` and ``group.html`` over every participant's outputs.

One row per job found in the output folder. Intensity statistics of each synthesized image are
computed inside a head mask of its *source* image (Otsu's threshold, resampled to the output
grid when they differ), so a synthesis that puts signal outside the head or leaves the head
empty shows up. Outliers are flagged with the modified z-score of Iglewicz and Hoaglin (1993):
``z = 0.6745 (x - median) / MAD`` computed per target modality (contrasts are not
comparable) over each statistic; an output is flagged when any ``|z| > 3.5``. Groups of fewer
than :data:`MIN_GROUP` outputs are not flagged (``n/a``): a median of two says nothing.

With ``--output-spaces`` the table adds, per output, the Dice of its source's registration to
the template (``registration_dice``: the warped brain mask against the template's; the lowest
when the source went to several templates) and ``registration_outlier``: ``yes`` when that Dice
is below :data:`~tumsyn_bids.reports.collect.REGISTRATION_DICE_MIN` (0.90), or, among at least
:data:`MIN_GROUP` registered sources of the group, below ``median - 3 x 1.4826 x MAD`` of their
Dice values (the MAD scaled to a standard deviation for normal data; one-sided: only poor
overlap is suspicious); ``n/a`` without a registration.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from ..bids.dataset import update_bidsignore
from ..bids.io import atomic_write_text
from .collect import (
    REGISTRATION_DICE_MIN,
    OutputRecord,
    collect_registrations,
    collect_subject,
    dataset_participants,
    list_subjects,
    source_stem,
)
from .html import REPORT_IGNORE, e, figure_relpath, href, input_dir, page

LOGGER = logging.getLogger("tumsyn_bids.reports")

STAT_COLUMNS = ("mask_voxels", "mean", "std", "p01", "median", "p99")
#: Statistics the outlier flag looks at (mask size is a property of the source).
FLAG_STATS = ("mean", "std", "p01", "median", "p99")
Z_THRESHOLD = 3.5
MIN_GROUP = 3
COLUMNS = (
    "subject",
    "session",
    "source",
    "target_suffix",
    "output",
    "status",
    "seconds",
    "source_prompt",
    "target_prompt",
    *STAT_COLUMNS,
    "max_abs_robust_z",
    "outlier",
    "registration_dice",
    "registration_outlier",
    "report",
)
#: Scale of the MAD that makes it a standard deviation for normal data.
MAD_TO_SD = 1.4826
#: ``registration_outlier``: Dice below median - this many scaled MADs (module docstring).
DICE_MADS = 3.0


def intensity_stats(source_file: Path, output_file: Path) -> dict[str, float]:
    """Statistics of the synthesized image inside the source's head mask."""
    from .masks import brain_mask

    source = nib.load(source_file)
    output = nib.load(output_file)
    mask = brain_mask(np.asarray(source.dataobj, dtype=np.float32))
    same_grid = source.shape[:3] == output.shape[:3] and np.allclose(
        source.affine, output.affine, atol=1e-4
    )
    if not same_grid:
        from nilearn.image import resample_to_img

        mask_img = nib.Nifti1Image(mask.astype(np.uint8), source.affine)
        mask = np.asarray(
            resample_to_img(mask_img, output, interpolation="nearest").dataobj, dtype=bool
        )
    data = np.asarray(output.dataobj, dtype=np.float32)
    values = data[mask & np.isfinite(data)]
    if values.size == 0:
        return dict.fromkeys(STAT_COLUMNS, float("nan")) | {"mask_voxels": 0}
    p01, median, p99 = np.percentile(values, [1, 50, 99])
    return {
        "mask_voxels": int(values.size),
        "mean": float(values.mean()),
        "std": float(values.std()),
        "p01": float(p01),
        "median": float(median),
        "p99": float(p99),
    }


def robust_z(values: pd.Series) -> pd.Series:
    """Modified z-scores; 0 where the MAD is 0 and the value equals the median."""
    median = values.median()
    mad = (values - median).abs().median()
    if not np.isfinite(mad) or mad == 0:
        return pd.Series(np.where(values == median, 0.0, np.inf), index=values.index).where(
            values.notna()
        )
    return 0.6745 * (values - median) / mad


def flag_outliers(frame: pd.DataFrame) -> pd.DataFrame:
    """Fill ``max_abs_robust_z`` and ``outlier`` per target modality (see module docstring)."""
    frame = frame.copy()
    frame["max_abs_robust_z"] = np.nan
    frame["outlier"] = "n/a"
    finished = frame["status"].eq("done") & frame["mean"].notna()
    for _, rows in frame[finished].groupby("target_suffix"):
        if len(rows) < MIN_GROUP:
            continue
        scores = pd.concat([robust_z(rows[c].astype(float)).abs() for c in FLAG_STATS], axis=1)
        worst = scores.max(axis=1)
        frame.loc[rows.index, "max_abs_robust_z"] = worst.round(2)
        frame.loc[rows.index, "outlier"] = np.where(worst > Z_THRESHOLD, "yes", "no")
    return frame


def registration_outliers(dice: pd.Series) -> pd.Series:
    """``yes``/``no`` per registration Dice (``n/a`` where missing): below
    :data:`~tumsyn_bids.reports.collect.REGISTRATION_DICE_MIN`, or below ``median - 3 x 1.4826
    x MAD`` when at least :data:`MIN_GROUP` values are known (module docstring)."""
    values = pd.to_numeric(dice, errors="coerce")
    known = values.dropna()
    low = values < REGISTRATION_DICE_MIN
    if len(known) >= MIN_GROUP:
        median = known.median()
        mad = (known - median).abs().median()
        low |= values < median - DICE_MADS * MAD_TO_SD * mad
    return pd.Series(np.where(values.isna(), "n/a", np.where(low, "yes", "no")), dice.index)


def group_table(output_dir: Path, bids_dir: Path | None = None) -> pd.DataFrame:
    """The rows of ``group_synthesis.tsv`` (statistics computed here)."""
    source_root = input_dir(output_dir, bids_dir)
    rows = []
    for subject in list_subjects(output_dir):
        dice: dict[str, float] = {}
        for reg in collect_registrations(output_dir, subject):
            if reg.dice is not None:
                dice[reg.source] = min(reg.dice, dice.get(reg.source, 1.0))
        for record in collect_subject(output_dir, subject):
            row = _row(output_dir, record, source_root)
            stem = source_stem(record.source) if record.source else None
            row["registration_dice"] = dice.get(stem, np.nan) if stem else np.nan
            rows.append(row)
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    if not len(frame):
        return frame
    frame = flag_outliers(frame)
    # one value per registered source, not per output: a source with 4 targets counts once
    sources = frame.drop_duplicates(["subject", "source"])
    flags = registration_outliers(sources["registration_dice"])
    keys = zip(sources["subject"], sources["source"], strict=True)
    lookup = dict(zip(keys, flags, strict=True))
    pairs = zip(frame["subject"], frame["source"], strict=True)
    frame["registration_outlier"] = [lookup.get(k, "n/a") for k in pairs]
    return frame[list(COLUMNS)]


def _row(output_dir: Path, record: OutputRecord, source_root: Path | None) -> dict:
    side = record.sidecar
    row = {
        "subject": record.subject,
        "session": record.session,
        "source": record.source,
        "target_suffix": record.target_suffix,
        "output": record.output,
        "status": record.status,
        "seconds": record.seconds,
        "source_prompt": side.get("SourcePrompt"),
        "target_prompt": side.get("TargetPrompt"),
        "report": f"sub-{record.subject}.html",
    }
    row |= dict.fromkeys(STAT_COLUMNS, np.nan)
    if record.has_image and record.source and source_root is not None:
        source = source_root / record.source
        try:
            row |= intensity_stats(source, output_dir / record.output)
        except Exception as exc:  # unreadable file: the row stays, without statistics
            LOGGER.warning("group: no statistics for %s: %s", record.output, exc)
    return row


def build_group_report(
    output_dir: str | os.PathLike[str], bids_dir: str | os.PathLike[str] | None = None
) -> dict:
    """Write ``group_synthesis.tsv`` and ``group.html``; return a summary.

    The summary has ``table`` (the TSV as a frame), ``missing`` (participants of the input
    dataset without any output here) and the two paths.
    """
    root = Path(output_dir)
    source_root = input_dir(root, bids_dir)
    frame = group_table(root, source_root)
    tsv = atomic_write_text(
        root / "group_synthesis.tsv",
        frame.to_csv(sep="\t", index=False, na_rep="n/a", float_format="%.6g"),
    )
    with_outputs = set(frame["subject"]) if len(frame) else set()
    participants = dataset_participants(source_root) if source_root else []
    missing = [p for p in participants if p not in with_outputs]
    html_path = atomic_write_text(root / "group.html", group_page(root, frame, missing))
    update_bidsignore(root, REPORT_IGNORE)
    return {"table": frame, "missing": missing, "tsv": tsv, "html": html_path}


def group_page(root: Path, frame: pd.DataFrame, missing: list[str]) -> str:
    """``group.html``: counts, missing participants, flagged outputs, thumbnail gallery."""
    body = ["<h1>tumsyn-bids group report</h1>"]
    counts = frame["status"].value_counts().to_dict() if len(frame) else {}
    summary = ", ".join(f"{v} {e(k)}" for k, v in sorted(counts.items())) or "no outputs"
    subjects = sorted(set(frame["subject"])) if len(frame) else []
    body.append(
        f"<p>{len(subjects)} participant(s) with outputs; jobs: {summary}. Table: "
        '<a href="group_synthesis.tsv">group_synthesis.tsv</a>.</p>'
    )
    if missing:
        body.append(
            '<p class="warn">Participants of the input dataset without outputs: '
            + ", ".join(f"sub-{e(m)}" for m in missing)
            + "</p>"
        )
    flagged = frame[frame["outlier"].eq("yes")] if len(frame) else frame
    failed = frame[~frame["status"].isin(["done", "skipped"])] if len(frame) else frame
    if len(failed):
        items = "".join(
            f'<li><a href="{href(r.report)}">{e(r.output)}</a>: {e(r.status)}</li>'
            for r in failed.itertuples()
        )
        body.append(f'<div class="err">Jobs without output:<ul>{items}</ul></div>')
    if len(flagged):
        items = "".join(
            f'<li><a href="{href(r.report)}#{e(Path(r.output).name.split(".")[0])}">'
            f"{e(r.output)}</a> (robust z {e(r.max_abs_robust_z)})</li>"
            for r in flagged.itertuples()
        )
        body.append(
            f'<div class="warn">Intensity outliers (|robust z| &gt; {Z_THRESHOLD} within '
            f"their target modality):<ul>{items}</ul></div>"
        )
    registered = frame[frame["registration_outlier"].eq("yes")] if len(frame) else frame
    if len(registered):
        items = "".join(
            f'<li><a href="{href(r.report)}">sub-{e(r.subject)}: {e(r.source)}</a> (Dice '
            f"{float(r.registration_dice):.3f})</li>"
            for r in registered.drop_duplicates(["subject", "source"]).itertuples()
        )
        body.append(
            '<div class="warn">Registration outliers (Dice of the warped brain mask below '
            f"{REGISTRATION_DICE_MIN:.2f}, or below the median - {DICE_MADS:g} x "
            f"{MAD_TO_SD} x MAD of the group):<ul>{items}</ul></div>"
        )
    body.append("<h2>Gallery</h2>")
    for subject in subjects:
        body.append(f'<h3><a href="{href(f"sub-{subject}.html")}">sub-{e(subject)}</a></h3>')
        cards = []
        for r in frame[frame["subject"] == subject].itertuples():
            stem = Path(r.output).name.split(".")[0]
            figure = f"sub-{subject}/figures/{stem}_compare.png"
            flag = ' <span class="flag">outlier</span>' if r.outlier == "yes" else ""
            img = (
                f'<img src="{href(figure)}" alt="{e(stem)}">'
                if (root / figure).is_file()
                else f"<p>(no figure: {e(r.status)})</p>"
            )
            cards.append(
                f'<a href="{href(r.report)}#{e(stem)}">{img}<br><small>{e(stem)}</small>{flag}</a>'
            )
        body.append('<div class="gallery">' + "".join(cards) + "</div>")
    return page("tumsyn-bids group report", body)


__all__ = [
    "COLUMNS",
    "Z_THRESHOLD",
    "build_group_report",
    "figure_relpath",
    "flag_outliers",
    "group_table",
    "intensity_stats",
    "registration_outliers",
    "robust_z",
]
