"""The workflow factories as a public API: embedding one synthesis job in a user's pipeline."""

import nibabel as nib
import numpy as np
from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from tests.conftest import SMALL
from tumsyn_bids.workflows import InferenceConfig, init_synthesis_wf


def _spec(**kw) -> InferenceConfig:
    return InferenceConfig(
        str(SMALL / "synthesis.pth"),
        str(SMALL / "text_encoder.pt"),
        text_heads=2,
        device="cpu",
        patch_size=(20, 20, 20),
        **kw,
    )


def test_synthesis_node_is_a_gpu_node_only_on_cuda():
    cpu = init_synthesis_wf(_spec()).get_node("synthesize")
    assert not cpu.is_gpu_node()
    cuda = InferenceConfig(
        str(SMALL / "synthesis.pth"), str(SMALL / "text_encoder.pt"), device_type="cuda"
    )
    assert init_synthesis_wf(cuda).get_node("synthesize").is_gpu_node()


def test_embedded_in_another_workflow(tmp_path):
    outer = pe.Workflow(name="user_wf", base_dir=str(tmp_path))
    src = pe.Node(niu.IdentityInterface(fields=["image"]), name="user_source")
    src.inputs.image = str(SMALL / "input_T1w.nii.gz")
    synth = init_synthesis_wf(_spec())
    synth.inputs.inputnode.prompt = (
        "Age: 16; Gender: F; Scanner: 3.0 Siemens; Modality: T2w; Voxel size: (0.8, 0.8, 0.8); "
        "Imaging parameter TR(ms), TE(ms), TI(ms), and FA(degree):  (3200.0, 563.0, None, T2var)"
    )
    synth.inputs.inputnode.voxel_size = (0.5, 0.6, 0.75)  # the source's 1 x 1.2 x 1.5 mm halved
    sink = pe.Node(niu.IdentityInterface(fields=["result"]), name="user_sink")
    outer.connect([
        (src, synth, [("image", "inputnode.source_file")]),
        (synth, sink, [("outputnode.out_file", "result")]),
    ])  # fmt: skip
    graph = outer.run(plugin="Linear")
    node = next(n for n in graph.nodes() if n.name == "postprocess")
    out = nib.load(node.result.outputs.out_file)
    assert out.shape == (42, 46, 54)
    src_img = nib.load(SMALL / "input_T1w.nii.gz")
    np.testing.assert_allclose(out.header.get_zooms(), (0.5, 0.6, 0.75), rtol=0, atol=1e-6)
    np.testing.assert_allclose(np.array(out.header.get_zooms()) * 2, src_img.header.get_zooms())
    assert np.isfinite(np.asarray(out.dataobj)).all()


def test_threads_reach_the_node():
    """``--omp-nthreads``: MultiProc reserves the threads and the node sets torch's count."""
    node = init_synthesis_wf(_spec(num_threads=3)).get_node("synthesize")
    assert node.n_procs == 3
    assert node.inputs.num_threads == 3
