"""Populate a TemplateFlow home offline with ``MNI152NLin2009aSym`` from nilearn's wheel.

nilearn ships three volumes of the ICBM 2009a nonlinear symmetric atlas (Fonov et al. 2009,
2011) in ``nilearn/datasets/data``: ``mni_icbm152_{t1,gm,wm}_tal_nlin_sym_09a_converted.nii.gz``.
What they are, measured on nilearn 0.14.1 (and recorded, with checksums, in
``tumsyn_bids/data/templates.json``):

- 197 x 233 x 189 voxels of 1 mm, axis-aligned RAS+, first voxel centre at (-98, -134, -72) mm:
  the grid of the MNI distribution of the 2009a symmetric atlas;
- uint8, 0..255: nilearn rescaled ("converted") the intensities and probabilities to 8 bits;
- the T1w is brain-only: every voxel outside one connected brain region is exactly 0 and every
  voxel inside is >= 28, so ``T1w > 0`` recovers the brain mask nilearn applied;
- exactly left-right symmetric (the x-mirror of every volume equals the volume), as the
  symmetric atlas is. (nilearn's documentation calls its template "asymmetrical", which these
  files contradict.)

TemplateFlow's ``template_description.json`` for ``MNI152NLin2009aSym`` (in the client's
skeleton) declares its res-1 grid as 193 x 229 x 193 voxels of 1 mm with the first voxel centre at
(-96, -132, -78) mm. The two grids differ by whole voxels, so the files are written onto
TemplateFlow's grid by cropping (2 voxels at each x and y side, 2 at the top) and zero-padding
(6 slices below z = -72 mm) - no interpolation. The crop removes only zero voxels of all three
volumes; the padded slices are brain-stem in the real atlas but 0 here.

Files written (TemplateFlow names; the client's skeleton has placeholders for the last three):

- ``tpl-MNI152NLin2009aSym_res-1_desc-brain_T1w.nii.gz``: nilearn's brain-only T1w, uint8 as
  shipped. Named ``desc-brain`` as TemplateFlow names brain-extracted T1w images (e.g. in
  ``MNI152NLin2009cAsym``); TemplateFlow's ``_T1w`` is the whole head, which nilearn does not ship.
- ``tpl-MNI152NLin2009aSym_res-1_desc-brain_mask.nii.gz``: uint8, 1 where the T1w is non-zero.
- ``tpl-MNI152NLin2009aSym_res-1_label-{GM,WM}_probseg.nii.gz``: float32 probabilities, nilearn's
  8-bit values / 255 (steps of 1/255). The CSF map is not in nilearn's wheel.
- ``template_description.json``, ``LICENSE`` and ``CHANGES`` of the template, copied from the
  TemplateFlow client's own skeleton when the home lacks them.

No res-2 files are written: TemplateFlow has none for this template (see
:func:`tumsyn_bids.templates.references.reference_grid` for 2 mm output grids).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from ..exitcodes import EX_CANTCREAT, EX_DATAERR, EX_NOINPUT, EX_USAGE

PACKAGED_TEMPLATE = "MNI152NLin2009aSym"
RECORD_PATH = Path(__file__).resolve().parents[1] / "data" / "templates.json"
#: NIfTI xform code of the MNI152 space (NIFTI_XFORM_MNI_152).
_XFORM_MNI152 = 4


class TemplateInitError(RuntimeError):
    """``tumsyn-templates init`` cannot complete; ``exit_code`` is the documented exit status
    (65 source data differ from the record, 66 source files missing, 73 the home cannot be
    written or holds a different file under a name this command writes)."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class InitResult:
    """What :func:`init_home` did: files written and files already identical (names relative
    to the home)."""

    home: Path
    template: str
    written: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)


def load_record() -> dict:
    """The record of sources and outputs (``tumsyn_bids/data/templates.json``)."""
    return json.loads(RECORD_PATH.read_text())


def data_sha256(data: np.ndarray) -> str:
    """SHA-256 of an array's values: little-endian bytes of its dtype, C order (i fastest last).

    Hashing values rather than the ``.nii.gz`` file keeps the check independent of the gzip
    level and zlib version that wrote the file.
    """
    arr = np.ascontiguousarray(data, dtype=data.dtype.newbyteorder("<"))
    return hashlib.sha256(arr.tobytes()).hexdigest()


def nilearn_data_dir() -> Path:
    """``nilearn/datasets/data`` of the installed nilearn, found without importing nilearn."""
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise TemplateInitError("nilearn is not installed: pip install nilearn", EX_NOINPUT)
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"


def _skeleton_zip() -> Path:
    """The TemplateFlow client's bundled skeleton (``templateflow/conf/templateflow-skel.zip``),
    found without importing the client (its import would initialise a home)."""
    spec = importlib.util.find_spec("templateflow")
    if spec is None or not spec.submodule_search_locations:
        raise TemplateInitError(
            "templateflow is not installed: pip install templateflow", EX_NOINPUT
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "conf" / "templateflow-skel.zip"
    if not path.is_file():
        raise TemplateInitError(
            f"{path}: the TemplateFlow client's skeleton is missing", EX_NOINPUT
        )
    return path


def _grid_affine(grid: dict) -> np.ndarray:
    aff = np.diag([*grid["zooms"], 1.0])
    aff[:3, 3] = grid["origin"]
    return aff


def _load_source(path: Path, expected: dict) -> np.ndarray:
    """A nilearn volume as an array, after checking shape, affine, dtype and value checksum."""
    if not path.is_file():
        raise TemplateInitError(
            f"{path}: missing from the installed nilearn; reinstall nilearn "
            f"(the record was made with nilearn {expected['nilearn']})",
            EX_NOINPUT,
        )
    img = nib.load(path)
    data = np.asanyarray(img.dataobj)
    problems = []
    if list(data.shape) != expected["shape"]:
        problems.append(f"shape {data.shape} != {tuple(expected['shape'])}")
    if not np.allclose(img.affine, expected["affine"], atol=1e-4):
        problems.append("affine differs")
    if str(data.dtype) != expected["dtype"]:
        problems.append(f"dtype {data.dtype} != {expected['dtype']}")
    if not problems and data_sha256(data) != expected["data_sha256"]:
        problems.append("voxel values differ")
    if problems:
        raise TemplateInitError(
            f"{path}: not the volume recorded in {RECORD_PATH.name} ({'; '.join(problems)}); "
            f"install nilearn {expected['nilearn']} or update the record",
            EX_DATAERR,
        )
    return data


def _onto_grid(data: np.ndarray, src_affine: np.ndarray, shape, affine: np.ndarray) -> np.ndarray:
    """Copy ``data`` onto another axis-aligned grid with the same voxel size whose origin is a
    whole number of voxels away: crop and zero-pad, no interpolation.

    Raises ValueError when the grids are not related by a whole-voxel shift.
    """
    if not (
        np.allclose(src_affine[:3, :3], affine[:3, :3])
        and np.allclose(affine[:3, :3], np.diag(np.diag(affine[:3, :3])))
    ):
        raise ValueError("grids differ in voxel size or axes")
    shift = np.linalg.solve(src_affine[:3, :3], affine[:3, 3] - src_affine[:3, 3])
    if not np.allclose(shift, np.round(shift), atol=1e-4):
        raise ValueError(f"grids are {shift} voxels apart, not a whole number")
    shift = np.round(shift).astype(int)  # target voxel 0 is source voxel `shift`
    out = np.zeros(tuple(shape), dtype=data.dtype)
    src_lo = np.maximum(shift, 0)
    src_hi = np.minimum(shift + np.asarray(shape), data.shape)
    dst_lo = src_lo - shift
    dst_hi = src_hi - shift
    if np.any(src_hi <= src_lo):
        return out
    out[tuple(slice(a, b) for a, b in zip(dst_lo, dst_hi, strict=True))] = data[
        tuple(slice(a, b) for a, b in zip(src_lo, src_hi, strict=True))
    ]
    return out


def _derive(kind: str, source: np.ndarray) -> np.ndarray:
    if kind == "copy":
        return source
    if kind == "nonzero":
        return (source > 0).astype(np.uint8)
    if kind == "divide255":
        return (source.astype(np.float32) / np.float32(255.0)).astype(np.float32)
    raise ValueError(f"unknown derivation {kind!r} in {RECORD_PATH.name}")


def _nifti(data: np.ndarray, affine: np.ndarray) -> nib.Nifti1Image:
    img = nib.Nifti1Image(data, affine)
    img.header.set_data_dtype(data.dtype)
    img.header.set_xyzt_units("mm")
    img.header.set_qform(affine, _XFORM_MNI152)
    img.header.set_sform(affine, _XFORM_MNI152)
    img.header["descrip"] = b"ICBM 2009a sym via nilearn; tumsyn-templates"
    # Probabilities and labels are stored as they are: no intensity scaling.
    img.header.set_slope_inter(1.0, 0.0)
    return img


def build_images(record: dict | None = None, template: str = PACKAGED_TEMPLATE) -> dict:
    """The template's files as in-memory images, keyed by file name, from nilearn's volumes.

    Every source is checked against the record first (:class:`TemplateInitError`, exit 65/66).
    Arrays are in NIfTI (i, j, k) order on the record's res-1 grid (RAS+, 1 mm).
    """
    record = record or load_record()
    spec = record[template]
    data_dir = nilearn_data_dir()
    sources = {
        key: (_load_source(data_dir / src["name"], src), np.asarray(src["affine"]))
        for key, src in spec["sources"].items()
    }
    grid = spec["grids"]["1"]
    affine = _grid_affine(grid)
    images = {}
    for name, out in spec["files"].items():
        data, src_affine = sources[out["source"]]
        regridded = _onto_grid(data, src_affine, grid["shape"], affine)
        images[name] = _nifti(_derive(out["derive"], regridded), affine)
    return images


def _same_image(path: Path, img: nib.Nifti1Image, expected_sha: str) -> bool | None:
    """True: ``path`` holds these values on this grid; False: it holds something else; None:
    it is a zero-byte TemplateFlow placeholder (or does not exist)."""
    if not path.exists() or path.stat().st_size == 0:
        return None
    try:
        existing = nib.load(path)
        data = np.asanyarray(existing.dataobj)
    except Exception:  # noqa: BLE001 - any unreadable file is "something else"
        return False
    return (
        data.shape == img.shape
        and data.dtype == img.get_data_dtype()
        and np.allclose(existing.affine, img.affine, atol=1e-4)
        and data_sha256(data) == expected_sha
    )


def _write_atomic(path: Path, write) -> None:
    """Write through a temporary file in the same folder, then rename it into place; the file
    gets the usual permissions (0666 minus the umask), not mkstemp's 0600."""
    suffix = ".tmp.nii.gz" if path.name.endswith(".nii.gz") else ".tmp"  # nibabel reads it
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _check_description(path: Path, text: str, grid: dict) -> None:
    """A template description (``text``, from ``path``) must declare the res-1 grid the files
    are written on."""
    try:
        declared = json.loads(text)["res"]
    except (ValueError, KeyError) as exc:
        msg = f"{path}: unreadable ({exc}); remove it and rerun"
        raise TemplateInitError(msg, EX_CANTCREAT) from exc
    res1 = declared.get("1") or declared.get("01")
    if not res1 or (
        list(res1["shape"]) != grid["shape"]
        or not np.allclose(res1["origin"], grid["origin"])
        or not np.allclose(res1["zooms"], grid["zooms"])
    ):
        raise TemplateInitError(
            f"{path}: declares a res-1 grid other than {grid['shape']} at origin "
            f"{grid['origin']} mm, which the packaged files have; use another home",
            EX_CANTCREAT,
        )


def init_home(home: str | os.PathLike, template: str = PACKAGED_TEMPLATE) -> InitResult:
    """Write ``template`` into the TemplateFlow home ``home``, in TemplateFlow's layout.

    Idempotent: files that already hold the same values are left as they are. Other templates in
    the home are not touched. Every check runs before anything is written.

    Raises
    ------
    TemplateInitError
        ``exit_code`` 73 when a file this command writes already exists with other content (a
        real TemplateFlow file, say) - it is never overwritten - or the home cannot be written;
        65/66 when nilearn's volumes are not the recorded ones or are missing.
    """
    home = Path(home).absolute()
    record = load_record()
    if template not in record:
        raise TemplateInitError(
            f"{template}: no packaged source; this command writes {', '.join(record)}",
            EX_USAGE,
        )
    spec = record[template]
    images = build_images(record, template)
    tpl_dir = home / f"tpl-{template}"

    # 1. Check: every file we would write is absent, a placeholder, or identical.
    todo = {}
    result = InitResult(home=home, template=template)
    for name, img in images.items():
        expected = spec["files"][name]["data_sha256"]
        if data_sha256(np.asanyarray(img.dataobj)) != expected:
            raise TemplateInitError(
                f"{name}: built from nilearn's files but not the values recorded in "
                f"{RECORD_PATH.name}; this is a bug in tumsyn-bids",
                EX_DATAERR,
            )
        state = _same_image(tpl_dir / name, img, expected)
        if state is False:
            raise TemplateInitError(
                f"{tpl_dir / name}: exists with other content (a real TemplateFlow file?) and "
                "is never overwritten; use that home as it is, or init another folder",
                EX_CANTCREAT,
            )
        if state:
            result.unchanged.append(f"tpl-{template}/{name}")
        else:
            todo[name] = img

    # The skeleton files to add (absent or empty ones), and the description the home will have.
    skeleton = {}
    with zipfile.ZipFile(_skeleton_zip()) as skel:
        for member in spec["skeleton_files"]:
            dest = tpl_dir / member
            if not (dest.exists() and dest.stat().st_size > 0):
                skeleton[member] = skel.read(f"tpl-{template}/{member}")
    desc_path = tpl_dir / "template_description.json"
    try:
        desc_text = skeleton.get(desc_path.name) or desc_path.read_text()
    except OSError as exc:
        raise TemplateInitError(f"{desc_path}: unreadable ({exc.strerror})", EX_CANTCREAT) from exc
    _check_description(desc_path, desc_text, spec["grids"]["1"])

    # 2. Write: the template's metadata from the client's skeleton, then the images.
    try:
        tpl_dir.mkdir(parents=True, exist_ok=True)
        for member, content in skeleton.items():
            _write_atomic(tpl_dir / member, lambda p, c=content: p.write_bytes(c))
            result.written.append(f"tpl-{template}/{member}")
        for name, img in todo.items():
            _write_atomic(tpl_dir / name, lambda p, i=img: nib.save(i, p))
            result.written.append(f"tpl-{template}/{name}")
    except OSError as exc:
        raise TemplateInitError(
            f"cannot write {tpl_dir}: {exc.strerror or exc}", EX_CANTCREAT
        ) from exc

    # 3. Verify what is on disk now.
    for name, img in images.items():
        if not _same_image(tpl_dir / name, img, spec["files"][name]["data_sha256"]):
            raise TemplateInitError(f"{tpl_dir / name}: wrong content after writing", EX_CANTCREAT)
    return result
