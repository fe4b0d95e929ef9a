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
    checkpoint: str, text_encoder: str, text_heads: int | None, device: str, precision: str
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
    )
    with _LOCK:
        if key not in _CACHE:
            net = load_synthesis(checkpoint).model
            text = load_text_encoder(text_encoder, heads=text_heads).model
            _CACHE[key] = Synthesizer(net, text, device=device, precision=precision)
        return _CACHE[key]


class _SynthesizeInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="conformed source image")
    prompt = traits.Str(mandatory=True, desc="target prompt")
    checkpoint = File(exists=True, mandatory=True, desc="synthesis weights (checkpoint.pth)")
    text_encoder = File(exists=True, mandatory=True, desc="text encoder (checkpoint_CLIP.pt)")
    text_heads = traits.Int(desc="text tower heads when the checkpoint does not record them")
    scale_ijk = traits.Tuple(
        traits.Float, traits.Float, traits.Float, mandatory=True, desc="output samples per voxel"
    )
    patch_size = traits.Tuple(
        traits.Int, traits.Int, traits.Int, mandatory=True, desc="patch edges along i, j, k"
    )
    overlap = traits.Range(low=0.0, high=0.95, value=0.5, usedefault=True)
    batch_size = traits.Int(1, usedefault=True)
    device = traits.Enum("auto", "cpu", "cuda", usedefault=True)
    precision = traits.Enum("fp32", "bf16", usedefault=True)
    reference = traits.Bool(False, usedefault=True, desc="reproduce the authors' loop exactly")
    use_gpu = traits.Bool(False, usedefault=True, desc="schedule on MultiProc's GPU slots")
    num_threads = traits.Int(desc="torch CPU threads for this node")


class _SynthesizeOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="synthesized image on the output grid")


class Synthesize(SimpleInterface):
    """Synthesize the image ``prompt`` describes from ``in_file`` (see tumsyn_bids.model)."""

    input_spec = _SynthesizeInputSpec
    output_spec = _SynthesizeOutputSpec

    def _run_interface(self, runtime):
        import nibabel as nib

        from ..model import PatchSettings
        from ..model.volume import load_volume, to_nifti

        inputs = self.inputs
        if isdefined(inputs.num_threads):
            import torch

            torch.set_num_threads(inputs.num_threads)
        heads = inputs.text_heads if isdefined(inputs.text_heads) else None
        synth = get_synthesizer(
            inputs.checkpoint, inputs.text_encoder, heads, inputs.device, inputs.precision
        )
        volume = load_volume(inputs.in_file)
        settings = PatchSettings.for_scale(
            patch_size=tuple(inputs.patch_size)[::-1],
            scale=tuple(inputs.scale_ijk)[::-1],
            overlap=inputs.overlap,
            batch_size=inputs.batch_size,
            reference=inputs.reference,
        )
        result = synth.synthesize(volume.data, inputs.prompt, settings)
        out = os.path.join(runtime.cwd, "synthesized_raw.nii.gz")
        nib.save(to_nifti(result, volume, settings.scale[::-1]), out)
        self._results["out_file"] = out
        return runtime
