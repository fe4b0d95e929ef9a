"""Report figures drawn while the workflow runs, from images that exist only in the work folder.

The brain mask and N4's bias field of a source are drawn next to the derivatives
(``sub-XX/figures/``) together with the preprocessing summary (``sub-XX/log/``), the way
fMRIPrep's reportlets are written during the run; the HTML report
(:mod:`tumsyn_bids.reports`) then links them, also when rebuilt with ``--reports-only``.
"""

from __future__ import annotations

import json
import os
from contextlib import suppress
from pathlib import Path

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    Directory,
    File,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)

__all__ = ["PreprocReport", "RegistrationReport"]


class _PreprocReportInputSpec(BaseInterfaceInputSpec):
    output_dir = Directory(mandatory=True, desc="root of the derivatives dataset")
    subject = traits.Str(mandatory=True, desc="participant label (without sub-)")
    stem = traits.Str(mandatory=True, desc="the source's file name without extension")
    in_file = File(exists=True, mandatory=True, desc="the preprocessed source (conformed grid)")
    mask_file = File(exists=True, mandatory=True, desc="its brain mask (same grid)")
    bias_file = File(exists=True, desc="N4's bias field (same grid), when N4 ran")
    summary = File(exists=True, mandatory=True, desc="the preprocessing summary (preproc.json)")


class _PreprocReportOutputSpec(TraitedSpec):
    out_files = traits.List(File(exists=True), desc="figures and record written")


class PreprocReport(SimpleInterface):
    """Write a source's preprocessing figures and record into the output folder.

    ``sub-XX/figures/<stem>_brainmask.png`` (the mask's outline over the source,
    :func:`tumsyn_bids.reports.figures.mask_figure`), ``<stem>_inu.png`` (the bias field,
    :func:`~tumsyn_bids.reports.figures.bias_figure`; removed when N4 did not run, so a rerun
    with ``--no-inu`` shows none) and ``sub-XX/log/<stem>_preproc.json`` (the summary). Each
    file is written atomically.
    """

    input_spec = _PreprocReportInputSpec
    output_spec = _PreprocReportOutputSpec

    def _run_interface(self, runtime):
        from ..bids.io import atomic_write_json
        from ..reports.collect import preproc_figure_relpath, preproc_record_relpath
        from ..reports.figures import bias_figure, mask_figure

        inputs = self.inputs
        root = Path(inputs.output_dir)
        suffix = inputs.stem.rsplit("_", 1)[-1]
        written = [
            mask_figure(
                inputs.in_file,
                inputs.mask_file,
                root / preproc_figure_relpath(inputs.subject, inputs.stem, "brainmask"),
                label=f"{suffix} + brain mask",
            )
        ]
        inu = root / preproc_figure_relpath(inputs.subject, inputs.stem, "inu")
        if isdefined(inputs.bias_file):
            written.append(bias_figure(inputs.in_file, inputs.bias_file, inu))
        else:
            with suppress(FileNotFoundError):
                os.unlink(inu)
        with open(inputs.summary, encoding="utf-8") as fh:
            summary = json.load(fh)
        record = root / preproc_record_relpath(inputs.subject, inputs.stem)
        written.append(atomic_write_json(record, summary))
        self._results["out_files"] = [str(p) for p in written]
        return runtime


class _RegistrationReportInputSpec(BaseInterfaceInputSpec):
    output_dir = Directory(mandatory=True, desc="root of the derivatives dataset")
    subject = traits.Str(mandatory=True, desc="participant label (without sub-)")
    stem = traits.Str(mandatory=True, desc="the source's file name without extension")
    template = traits.Str(mandatory=True, desc="TemplateFlow template registered to")
    warped_image = File(exists=True, mandatory=True, desc="source brain on the template grid")
    template_mask = File(exists=True, mandatory=True, desc="template brain mask (same grid)")
    dice = traits.Float(mandatory=True, desc="Dice of the warped mask against the template's")
    record = traits.Dict(desc="more fields of the record (settings, transforms)")
    elapsed = traits.Float(desc="antsRegistration wall time (s)")
    cpu_time = traits.Float(desc="antsRegistration CPU time, user + system (s)")


class RegistrationReport(SimpleInterface):
    """Write a source's registration figure and record into the output folder.

    ``sub-XX/figures/<stem>_space-<template>_registration.png``: the template's brain-mask
    outline (red) over the source brain warped into the template, as sMRIPrep's normalization
    reportlet shows it (:func:`tumsyn_bids.reports.figures.mask_figure`); and
    ``sub-XX/log/<stem>_space-<template>_registration.json``: ``Template``, ``Dice``,
    ``record``'s fields and the run time of ``antsRegistration`` (``WallTimeSeconds``,
    ``CPUTimeSeconds``). Both written atomically.
    """

    input_spec = _RegistrationReportInputSpec
    output_spec = _PreprocReportOutputSpec

    def _run_interface(self, runtime):
        from ..bids.io import atomic_write_json
        from ..reports.collect import registration_relpath
        from ..reports.figures import mask_figure

        inputs = self.inputs
        root = Path(inputs.output_dir)
        rel = registration_relpath(inputs.subject, inputs.stem, inputs.template, "figure")
        figure = mask_figure(
            inputs.warped_image,
            inputs.template_mask,
            root / rel,
            label=f"{inputs.stem.rsplit('_', 1)[-1]} in {inputs.template}",
        )
        record = {"Template": inputs.template, "Dice": round(float(inputs.dice), 4)}
        if isdefined(inputs.record):
            record.update(inputs.record)
        times = (("WallTimeSeconds", inputs.elapsed), ("CPUTimeSeconds", inputs.cpu_time))
        for key, value in times:
            if isdefined(value):
                record[key] = round(float(value), 1)
        path = root / registration_relpath(inputs.subject, inputs.stem, inputs.template, "record")
        self._results["out_files"] = [str(figure), str(atomic_write_json(path, record))]
        return runtime
