"""The GPU node: TUMSyn synthesis of one image under one target prompt."""

from __future__ import annotations

import os
import threading

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)

_CACHE: dict[tuple, object] = {}
_LOCK = threading.Lock()


def get_synthesizer(
    checkpoint: str,
    text_encoder: str,
    text_heads: int | None,
    device: str,
    precision: str,
    fused: bool = False,
):
    """Load the models once per process and reuse them for every node that process runs.

    MultiProc workers are long-lived processes, so a subject with several targets (and every
    later subject on the same worker) pays the loading cost once.
    """
    from ..model import Synthesizer, load_synthesis, load_text_encoder

    key = (
        os.path.realpath(checkpoint),
        os.path.getmtime(checkpoint),
        os.path.realpath(text_encoder),
        os.path.getmtime(text_encoder),
        text_heads,
        device,
        precision,
        fused,
    )
    with _LOCK:
        if key not in _CACHE:
            net = load_synthesis(checkpoint).model
            text = load_text_encoder(text_encoder, heads=text_heads).model
            _CACHE[key] = Synthesizer(net, text, device=device, precision=precision, fused=fused)
        return _CACHE[key]


class _SynthesizeInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="conformed source image")
    prompt = traits.Str(mandatory=True, desc="target prompt")
    checkpoint = File(exists=True, mandatory=True, desc="synthesis weights (checkpoint.pth)")
    text_encoder = File(exists=True, mandatory=True, desc="text encoder (checkpoint_CLIP.pt)")
    text_heads = traits.Int(desc="text tower heads when the checkpoint does not record them")
    voxel_size = traits.Tuple(
        traits.Float,
        traits.Float,
        traits.Float,
        desc="output voxel size in mm along (i, j, k), exact, over the source's field of view "
        "(unset: the source grid)",
    )
    mask_file = File(
        exists=True,
        desc="brain mask on in_file's grid: only patches holding a mask voxel are computed; "
        "output voxels no computed patch covers are 0",
    )
    patch_size = traits.Tuple(
        traits.Int, traits.Int, traits.Int, mandatory=True, desc="patch edges along i, j, k"
    )
    overlap = traits.Range(low=0.0, high=0.95, value=0.5, usedefault=True)
    batch_size = traits.Int(1, usedefault=True)
    device = traits.Enum("auto", "cpu", "cuda", usedefault=True)
    precision = traits.Enum("fp32", "bf16", usedefault=True)
    speed = traits.Enum(
        "default",
        "reference",
        "fast",
        usedefault=True,
        desc="--speed preset (tumsyn_bids.model.speed); reference: the authors' loop exactly",
    )
    masked_output = traits.Bool(
        False,
        usedefault=True,
        desc="the output is set to 0 outside mask_file afterwards: decode only next to the mask",
    )
    use_gpu = traits.Bool(False, usedefault=True, desc="schedule on MultiProc's GPU slots")
    num_threads = traits.Int(desc="torch CPU threads for this node")


class _SynthesizeOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="synthesized image on the output grid")
    grid = traits.Str(desc="the output grid record (JSON: shape, voxel_size, affine)")
    patches_computed = traits.Int(desc="patches encoded")
    patches_skipped = traits.Int(desc="patches skipped (no foreground, or no output voxel)")


class Synthesize(SimpleInterface):
    """Synthesize the image ``prompt`` describes from ``in_file`` (see tumsyn_bids.model)."""

    input_spec = _SynthesizeInputSpec
    output_spec = _SynthesizeOutputSpec

    def _run_interface(self, runtime):
        import json

        import nibabel as nib
        import numpy as np

        from ..model.speed import preset
        from ..model.volume import synthesize_nifti

        inputs = self.inputs
        speed = preset(inputs.speed)
        if isdefined(inputs.num_threads):
            import torch

            torch.set_num_threads(inputs.num_threads)
        heads = inputs.text_heads if isdefined(inputs.text_heads) else None
        synth = get_synthesizer(
            inputs.checkpoint,
            inputs.text_encoder,
            heads,
            inputs.device,
            inputs.precision,
            fused=speed.fused,
        )
        mask = None
        if isdefined(inputs.mask_file):
            mask = np.asarray(nib.load(inputs.mask_file).dataobj) > 0
        img, grid = synthesize_nifti(
            synth,
            inputs.in_file,
            inputs.prompt,
            patch_size=tuple(inputs.patch_size),
            voxel_size=tuple(inputs.voxel_size) if isdefined(inputs.voxel_size) else None,
            overlap=inputs.overlap,
            batch_size=inputs.batch_size,
            mask=mask,
            **speed.engine_options(masked_output=inputs.masked_output),
        )
        out = os.path.join(runtime.cwd, "synthesized_raw.nii.gz")
        nib.save(img, out)
        self._results["out_file"] = out
        self._results["grid"] = json.dumps(grid.record())
        self._results["patches_computed"] = synth.last_stats.computed
        self._results["patches_skipped"] = synth.last_stats.skipped
        return runtime
