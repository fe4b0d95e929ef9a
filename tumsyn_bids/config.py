"""The run configuration: one frozen record of everything a ``tumsyn`` run was asked to do.

``tumsyn_bids.cli.parser`` parses and validates the command line into a :class:`RunConfig`,
resolving once what depends on the environment or the weights (weight files, device, patch
size, batch size, plugin settings). Nothing mutates it afterwards: the plan
(:mod:`tumsyn_bids.plan`), the workflow (:mod:`tumsyn_bids.workflows`), the sidecars, the
citation text and ``logs/config.json`` all read the same object. Programs that embed tumsyn-bids
build one directly.

Nothing here imports torch.
"""

from __future__ import annotations

import dataclasses
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .model.speed import DEFAULT_SPEED, SPEEDS
from .model.tokenizer import CONTEXT_LENGTH

#: Suffixes TUMSyn can synthesize (those with a default protocol), in default source order.
SUPPORTED_TARGETS: tuple[str, ...] = ("T1w", "T2w", "FLAIR", "PDw", "T2starw")
DEFAULT_SOURCES: tuple[str, ...] = SUPPORTED_TARGETS


@dataclass(frozen=True)
class SynthesisRequest:
    """What to synthesize (see :mod:`tumsyn_bids.plan` for the rules that apply it).

    ``targets`` are BIDS suffixes or ``"missing"``; ``sources`` the source preference order;
    ``target_specs`` per-suffix protocols in BIDS names and units (``--target-spec``);
    ``target_like`` ``{"suffix": ..., "metadata": {...}, "path": ...}`` of a scan to imitate
    (``path``, its sidecar, names it in error messages);
    ``output_resolution`` the output voxel size in mm along the source's (i, j, k) axes, or
    None for the source grid.
    """

    targets: tuple[str, ...] = ("missing",)
    sources: tuple[str, ...] = DEFAULT_SOURCES
    target_specs: Mapping[str, Mapping[str, Any]] | None = None
    target_like: Mapping[str, Any] | None = None
    output_resolution: tuple[float, float, float] | None = None
    context_length: int = CONTEXT_LENGTH


@dataclass(frozen=True)
class InferenceConfig:
    """The weights and inference settings every synthesis node uses.

    ``patch_size`` is in voxels along the source's (i, j, k) axes; ``device`` is what was asked
    (``auto``, ``cpu``, ``cuda``) and ``device_type`` what it resolved to (None when not
    resolved, e.g. in a dry run); ``num_threads`` the torch CPU threads of a synthesis node;
    ``mem_gb`` the memory a synthesis node reserves in nipype's MultiProc. ``speed`` is the
    ``--speed`` preset (:mod:`tumsyn_bids.model.speed`); ``reference`` is True exactly when it is
    ``"reference"`` (give either; None: ``"reference"`` if ``reference`` else ``"default"``),
    and ``precision`` is already resolved for it and the device. Raises ``ValueError`` for an
    unknown speed or ``reference=True`` with another speed.
    """

    checkpoint: str
    text_encoder: str
    text_heads: int | None = None
    device: str = "auto"
    device_type: str | None = None
    precision: str = "fp32"
    patch_size: tuple[int, int, int] = (60, 60, 60)
    overlap: float = 0.5
    batch_size: int = 1
    reference: bool = False
    num_threads: int | None = None
    mem_gb: float = 4.0
    speed: str | None = None

    def __post_init__(self) -> None:
        if self.speed is None:
            object.__setattr__(self, "speed", "reference" if self.reference else DEFAULT_SPEED)
        if self.speed not in SPEEDS:
            raise ValueError(f"unknown speed {self.speed!r}; choose one of {', '.join(SPEEDS)}")
        if self.reference and self.speed != "reference":
            raise ValueError(f"reference=True contradicts speed={self.speed!r}")
        object.__setattr__(self, "reference", self.speed == "reference")

    @property
    def use_gpu(self) -> bool:
        """Whether synthesis nodes take one of MultiProc's GPU slots."""
        return (self.device_type or self.device) == "cuda"


@dataclass(frozen=True)
class ExecutionConfig:
    """How the workflow runs: nipype plugin, work dir, crash and rerun behaviour."""

    work_dir: Path = Path("work")
    plugin: str = "Linear"
    plugin_args: Mapping[str, Any] = field(default_factory=dict)
    nprocs: int = 1
    omp_nthreads: int | None = None
    mem_gb: float | None = None
    stop_on_first_crash: bool = False
    write_graph: bool = False
    overwrite: bool = False


#: ``--preproc``: ``full`` preprocesses every source (docs/preprocessing.md); ``none`` gives the
#: network the source as stored, without a brain mask (the behaviour before preprocessing).
PREPROC_MODES: tuple[str, ...] = ("full", "none")
#: ``--skull-strip-source``: strip unless already brain-extracted, always, never.
SKULL_STRIP_MODES: tuple[str, ...] = ("auto", "force", "skip")


@dataclass(frozen=True)
class PreprocConfig:
    """How source images are preprocessed before synthesis, and how outputs are masked.

    ``preproc`` is ``full`` (conform to RAS+, brain mask, N4, brain extraction; results mapped
    back onto the source grid) or ``none`` (the source as stored, no mask); the other settings
    apply to ``full`` only. ``skull_strip_source`` is ``auto``, ``force`` or ``skip``; ``inu``
    False is ``--no-inu``; ``mask_output`` False is ``--no-mask-output`` (keep the network's
    output outside the brain mask, and compute every patch); ``save_preproc`` writes the
    preprocessed source (``desc-preproc_<suffix>``). Raises ``ValueError`` for an unknown mode.
    """

    preproc: str = "full"
    skull_strip_source: str = "auto"
    inu: bool = True
    mask_output: bool = True
    save_preproc: bool = False

    def __post_init__(self) -> None:
        if self.preproc not in PREPROC_MODES:
            raise ValueError(f"preproc must be one of {', '.join(PREPROC_MODES)}: {self.preproc!r}")
        if self.skull_strip_source not in SKULL_STRIP_MODES:
            raise ValueError(
                f"skull_strip_source must be one of {', '.join(SKULL_STRIP_MODES)}: "
                f"{self.skull_strip_source!r}"
            )

    @property
    def full(self) -> bool:
        """Whether sources are preprocessed (``--preproc full``)."""
        return self.preproc == "full"


def new_run_id() -> str:
    """A run's identifier: its UTC start time (ms) and 8 random hex digits, e.g.
    ``20250101T120000.123Z-1a2b3c4d``; names sort by start time, and two runs started at the
    same moment (two tasks of a SLURM array) still differ. Names the run's log folder
    (:mod:`tumsyn_bids.runlog`)."""
    now = time.time()
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}Z"
    return f"{stamp}-{secrets.token_hex(4)}"


@dataclass(frozen=True)
class RunConfig:
    """One ``tumsyn`` run, resolved: paths, selection, request, inference, execution,
    preprocessing and output spaces.

    ``run_id`` (:func:`new_run_id`) names the run's own log folder, ``logs/run-<run_id>/``.
    """

    bids_dir: Path
    output_dir: Path
    analysis_level: str = "participant"
    participant_label: tuple[str, ...] | None = None
    session_label: tuple[str, ...] | None = None
    bids_filters: Mapping[str, Any] | None = None
    bids_database_dir: Path | None = None
    skip_bids_validation: bool = False
    request: SynthesisRequest = field(default_factory=SynthesisRequest)
    inference: InferenceConfig | None = None
    execution: ExecutionConfig = field(default_factory=ExecutionConfig)
    preproc: PreprocConfig = field(default_factory=PreprocConfig)
    #: ``--output-spaces``, canonical spelling (``T1w``, ``MNI152NLin2009aSym:res-2``): where
    #: outputs are written besides the source grid (docs/templates.md;
    #: :func:`tumsyn_bids.templates.spaces.parse_output_spaces` reads them).
    output_spaces: tuple[str, ...] = ("T1w",)
    dry_run: bool = False
    reports_only: bool = False
    #: ``--list-participants``: where the selected labels go (``"-"``: standard output).
    list_participants: str | None = None
    #: ``--index-only``: build the shared index (and record the validation) and stop.
    index_only: bool = False
    version: str = ""
    run_id: str = field(default_factory=new_run_id)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict of the whole configuration (``logs/config.json``)."""
        return _jsonable(dataclasses.asdict(self))


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value
