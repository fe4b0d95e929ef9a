"""``logs/CITATION.md``: a methods paragraph for this run and the references it numbers."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..bids.dataset import BIDS_VERSION, update_bidsignore
from ..bids.io import atomic_write_text
from ..bids.names import CITATION_RELPATH

__all__ = ["REFERENCES", "citation_text", "write_citation"]

REFERENCES: dict[str, str] = {
    "tumsyn": (
        "Wang Y., Xiong H., Sun K., et al. Towards General Text-guided Image Synthesis for "
        "Customized Multimodal Brain MRI Generation. arXiv:2409.16818 (2024). "
        "doi:10.48550/arXiv.2409.16818"
    ),
    "nipype": (
        "Gorgolewski K., Burns C.D., Madison C., Clark D., Halchenko Y.O., Waskom M.L., "
        "Ghosh S.S. Nipype: a flexible, lightweight and extensible neuroimaging data processing "
        "framework in Python. Frontiers in Neuroinformatics 5:13 (2011). "
        "doi:10.3389/fninf.2011.00013"
    ),
    "pybids": (
        "Yarkoni T., Markiewicz C.J., de la Vega A., et al. PyBIDS: Python tools for BIDS "
        "datasets. Journal of Open Source Software 4(40):1294 (2019). doi:10.21105/joss.01294"
    ),
    "pytorch": (
        "Paszke A., Gross S., Massa F., et al. PyTorch: An Imperative Style, High-Performance "
        "Deep Learning Library. Advances in Neural Information Processing Systems 32 "
        "(NeurIPS 2019), 8024-8035."
    ),
    "nibabel": (
        "Brett M., Markiewicz C.J., Hanke M., et al. NiBabel: access a cacophony of "
        "neuro-imaging file formats. Zenodo. doi:10.5281/zenodo.591597"
    ),
    "bids": (
        "Gorgolewski K.J., Auer T., Calhoun V.D., et al. The brain imaging data structure, a "
        "format for organizing and describing outputs of neuroimaging experiments. Scientific "
        "Data 3:160044 (2016). doi:10.1038/sdata.2016.44"
    ),
    "bids-derivatives": (
        "The BIDS Specification, section 'Derivatives' (BIDS version "
        f"{BIDS_VERSION}). doi:10.5281/zenodo.3686061"
    ),
    "bids-apps": (
        "Gorgolewski K.J., Alfaro-Almagro F., Auer T., et al. BIDS Apps: Improving ease of use, "
        "accessibility, and reproducibility of neuroimaging data analysis methods. PLoS "
        "Computational Biology 13(3):e1005209 (2017). doi:10.1371/journal.pcbi.1005209"
    ),
}


def _words(value: Any) -> str:
    """``"T2w"`` stays, ``["T2w", "FLAIR", "PDw"]`` becomes ``"T2w, FLAIR and PDw"``."""
    if isinstance(value, str) or not isinstance(value, Iterable):
        return str(value)
    items = [str(v) for v in value]
    if len(items) < 2:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def citation_text(version: str, settings: Mapping[str, Any] | None = None) -> str:
    """Markdown boilerplate for a methods section, filled in with this run's ``settings``.

    Recognised settings (all optional): ``sources`` and ``targets`` (BIDS suffixes),
    ``patch_size``, ``overlap``, ``precision``, ``reference`` (bool), ``output_voxel_size``
    (mm, None for the source grid), ``device``. Every setting, recognised or not, is also listed
    verbatim at the end, sorted, so the text is complete and deterministic.
    """
    s = dict(settings or {})
    if "patch_size" in s:
        patch = s["patch_size"]
        patch_words = "x".join(str(p) for p in patch) if isinstance(patch, Sequence) else patch
    else:
        patch_words = None
    what = "Anatomical images"
    if s.get("targets"):
        what = f"{_words(s['targets'])} images"
    source = " from the acquired images of each participant"
    if s.get("sources"):
        source = f" from the acquired {_words(s['sources'])} images of each participant"
    sentences = [
        f"{what} were synthesized{source} with tumsyn-bids {version}, a BIDS App [8] "
        "implementing TUMSyn, a text-guided model for customized multimodal brain MRI "
        "synthesis [1], with PyTorch [4]. The input dataset was queried with PyBIDS [3], the "
        "processing was organized with Nipype [2], and images were read and written with "
        "NiBabel [5].",
        "For every source image, a text prompt describing it (subject age and sex, field "
        "strength and manufacturer, modality, voxel size, and repetition, echo and inversion "
        "times and flip angle) was assembled from its BIDS sidecar metadata and the "
        "participants table; a second prompt described the protocol of the image to be "
        "synthesized. The TUMSyn network, conditioned on the target prompt, was applied to the "
        "source image patch by patch",
    ]
    patch_bits = []
    if patch_words is not None:
        patch_bits.append(f"patches of {patch_words} voxels")
    if "overlap" in s:
        patch_bits.append(f"an overlap ratio of {s['overlap']}")
    if patch_bits:
        sentences[-1] += " (" + ", ".join(patch_bits) + ")"
    if s.get("reference"):
        sentences[-1] += ", following the authors' reference inference procedure exactly"
    elif s.get("precision"):
        sentences[-1] += f", in {s['precision']} precision"
    sentences[-1] += "."
    if "output_voxel_size" in s:
        grid = s["output_voxel_size"]
        if grid is None:
            sentences.append("Outputs are on the grid of their source image.")
        else:
            sentences.append(
                f"Outputs were generated at {'x'.join(f'{float(v):g}' for v in grid)} mm "
                "voxels over the field of view of their source image."
            )
    sentences.append(
        "Results were stored as BIDS derivatives [6, 7], each image labeled "
        "desc-tumsynFrom<source contrast> and accompanied by a JSON sidecar recording the "
        "source image, both prompts, checkpoint digests, inference settings and software "
        "versions. Synthesized images are model predictions, not acquired data."
    )
    listed = "\n".join(
        f"- {key}: {json.dumps(value, sort_keys=True, default=str)}"
        for key, value in sorted(s.items())
    )
    order = ("tumsyn", "nipype", "pybids", "pytorch", "nibabel", "bids", "bids-derivatives")
    order += ("bids-apps",)
    references = "\n".join(f"{i}. {REFERENCES[key]}" for i, key in enumerate(order, start=1))
    parts = [
        "# Citing tumsyn-bids",
        "",
        "The paragraph below was generated by tumsyn-bids for this run and may be copied into "
        "the methods section of a manuscript (edit as needed). Please cite the references it "
        "numbers.",
        "",
        "## Methods",
        "",
        " ".join(sentences),
        "",
    ]
    if listed:
        parts += ["## Settings", "", listed, ""]
    parts += ["## References", "", references, ""]
    return "\n".join(parts)


def write_citation(
    output_dir: str | os.PathLike[str],
    version: str | None = None,
    settings: Mapping[str, Any] | None = None,
) -> Path:
    """Write :func:`citation_text` to ``output_dir/logs/CITATION.md``; return its path.

    ``version`` defaults to the installed tumsyn-bids. ``logs/`` is added to the output's
    ``.bidsignore`` because it is not part of the BIDS layout.
    """
    if version is None:
        from tumsyn_bids import __version__ as version
    path = atomic_write_text(Path(output_dir) / CITATION_RELPATH, citation_text(version, settings))
    update_bidsignore(output_dir, ["logs/"])
    return path
