"""Per-node sbatch options for nipype's SLURM plugins: a GPU for the synthesis node of a CUDA
run only (issue 20 item 4); the plugins read them from each node's ``plugin_args``."""

import pytest

from tests.conftest import SMALL
from tests.datasets import make_dataset
from tumsyn_bids.batch import GPU_SBATCH_ARGS, graph_plugin_args, node_plugin_args
from tumsyn_bids.bids.layout import index_anatomical
from tumsyn_bids.config import InferenceConfig, SynthesisRequest
from tumsyn_bids.plan import build_plan
from tumsyn_bids.workflows import init_tumsyn_wf


def _workflow(tmp_path, device_type):
    bids = make_dataset(tmp_path / "bids")
    plan = build_plan(index_anatomical(bids), SynthesisRequest(targets=("T2w", "FLAIR")))
    assert (plan["status"] == "planned").sum() == 4
    inference = InferenceConfig(
        str(SMALL / "synthesis.pth"), str(SMALL / "text_encoder.pt"), device_type=device_type
    )
    sidecars = {output: {} for output in plan["output"]}
    return init_tumsyn_wf(plan, bids, tmp_path / "out", tmp_path / "work", inference, sidecars)


@pytest.mark.parametrize("device_type", ["cuda", "cpu"])
def test_only_the_synthesis_nodes_of_a_cuda_run_ask_for_a_gpu(tmp_path, device_type):
    nodes = _workflow(tmp_path, device_type)._get_all_nodes()
    synth = [n for n in nodes if n.name == "synthesize"]
    others = [n for n in nodes if n.name != "synthesize"]
    assert len(synth) == 4 and len(others) >= 12
    for node in synth:
        args = node.plugin_args.get("sbatch_args", "")
        if device_type == "cuda":
            # appended to the YAML's sbatch_args (no "overwrite"), with its own leading space
            # because SLURMGraph concatenates without one
            assert args == f" {GPU_SBATCH_ARGS}" and "overwrite" not in node.plugin_args
        else:
            assert args == ""
    assert all("sbatch_args" not in n.plugin_args for n in others)


def test_node_plugin_args_and_graph_tag():
    assert node_plugin_args(True) == {"sbatch_args": " --gres=gpu:1"}
    assert node_plugin_args(False) == {}
    args, tag = graph_plugin_args("SLURMGraph", {"sbatch_args": "-p gpu"})
    assert tag.startswith("tumsyn-") and args["sbatch_args"] == f"-p gpu --comment={tag}"
    assert graph_plugin_args("SLURM", {"sbatch_args": "-p gpu"}) == ({"sbatch_args": "-p gpu"}, "")
