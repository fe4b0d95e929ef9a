"""Simulated subjects: a warped template anatomy, demographics, a scanner, and scans.

Each subject's anatomy is the ICBM152 template (:mod:`.anatomy`) pulled through a transform
``x = c + A (y + d(y) - c - t)`` from the subject's space ``y`` to the template's ``x``:

* ``d`` is a smooth random displacement, a sum of :data:`N_WAVES` plane waves with random
  directions, wavelengths of 60-120 mm and phases. Its amplitudes are normalised so that
  ``|d_i| <= max_displacement`` (3 mm by default) on every axis. Because every wavelength is
  at least 60 mm, each entry of the displacement's Jacobian is at most
  ``2 pi * 3 / 60 = 0.31``, so its Frobenius norm stays below 1 and ``y -> y + d(y)`` is
  one-to-one: the warp folds nothing. (That guarantee needs ``max_displacement`` below about
  3.2 mm; larger values are accepted but may fold.)
* ``A`` and ``t``: a small random rotation (up to 4 degrees per axis), translation (up to 3 mm
  per axis) and scale. The template is larger than a typical native-space brain (about 1.9 l
  inside its brain mask), so the global scale is drawn around 0.95 for men and 0.92 for women
  (linear; SD 0.025) with up to 2 % anisotropy per axis, giving intracranial (brain + CSF)
  volumes of about 1.3-1.8 l.

Age and sex are demographic labels for the prompts (``participants.tsv``); apart from the head
size they do not change the anatomy (no ageing model).

A scan (:meth:`SimulatedSubject.encoded_scan`) renders the noise-free image of a protocol
(:func:`.signal.render`), multiplies it by a smooth bias field (:data:`BIAS_AMPLITUDE`: up to
about +-16 %, wavelengths of 150-400 mm) and adds Rician noise: the magnitude of the complex
signal plus complex Gaussian noise of standard deviation ``sigma = mean brain signal / snr``.

Every random draw comes from a generator seeded by (dataset seed, subject label, purpose), so a
subject is the same whatever the other subjects of the dataset, and the same seed gives
bit-identical images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property

import nibabel as nib
import numpy as np

from ..prompts.protocol import Protocol
from .anatomy import (
    TissueMaps,
    dequantize_fractions,
    grid_for,
    load_template,
    quantize_fractions,
    sample_template,
)
from .head import HEAD_MARGIN_MM, head_levels, render_head
from .signal import render

__all__ = [
    "BIAS_AMPLITUDE",
    "FIELD_STRENGTHS",
    "MANUFACTURERS",
    "MAX_DISPLACEMENT_MM",
    "N_WAVES",
    "Deformation",
    "SimulatedSubject",
    "draw_subject",
    "scan_image",
]

MANUFACTURERS: tuple[str, ...] = ("Siemens", "GE", "Philips")
FIELD_STRENGTHS: tuple[float, ...] = (1.5, 3.0)
AGE_RANGE: tuple[int, int] = (20, 80)

#: Bound of each displacement component (mm).
MAX_DISPLACEMENT_MM = 3.0
#: Plane waves per random field (displacement and bias).
N_WAVES = 8
_DEFORM_WAVELENGTH_MM = (60.0, 120.0)
_MAX_ROTATION_DEG = 4.0
_MAX_TRANSLATION_MM = 3.0
_SCALE_MEAN = {"M": 0.95, "F": 0.92}
_SCALE_SD = 0.025
_SCALE_ANISOTROPY = 0.02

#: Bound of the log bias field: the multiplicative bias stays within exp(+-0.15).
BIAS_AMPLITUDE = 0.15
_BIAS_WAVELENGTH_MM = (150.0, 400.0)

#: Random-stream purposes (part of every generator's seed).
_DEMOGRAPHICS, _ANATOMY, _SCAN, _PROTOCOL = 0, 1, 2, 3

#: Largest value written into an int16 image (leaves headroom below 32767).
_INT16_TOP = 32000.0


def _label_number(text: str) -> int:
    """An integer that identifies a label (for seeding): its UTF-8 bytes read as a number."""
    return int.from_bytes(text.encode("utf-8"), "big")


@dataclass(frozen=True)
class _Waves:
    """A smooth random field: ``f_i(y) = sum_k a_ki sin(2 pi w_k . y + phi_ki)``."""

    wavevectors: np.ndarray  # (K, 3), cycles per mm
    phases: np.ndarray  # (K, C)
    amplitudes: np.ndarray  # (K, C)

    @classmethod
    def draw(
        cls,
        rng: np.random.Generator,
        components: int,
        wavelengths_mm: tuple[float, float],
        bound: float,
    ) -> _Waves:
        """Random waves whose components each stay within ``+-bound`` (times 0.5-1)."""
        direction = rng.normal(size=(N_WAVES, 3))
        direction /= np.linalg.norm(direction, axis=1, keepdims=True)
        wavelength = rng.uniform(*wavelengths_mm, size=(N_WAVES, 1))
        phases = rng.uniform(0.0, 2.0 * math.pi, size=(N_WAVES, components))
        amplitudes = rng.normal(size=(N_WAVES, components))
        target = bound * rng.uniform(0.5, 1.0, size=components)
        amplitudes *= target / np.abs(amplitudes).sum(axis=0)
        return cls(direction / wavelength, phases, amplitudes)

    def __call__(self, points: np.ndarray) -> np.ndarray:
        """Field values (C x N) at ``points`` (3 x N, mm)."""
        out = np.zeros((self.amplitudes.shape[1], points.shape[1]), dtype=np.float64)
        for k in range(self.wavevectors.shape[0]):
            argument = 2.0 * math.pi * (self.wavevectors[k] @ points)
            for c in range(out.shape[0]):
                out[c] += self.amplitudes[k, c] * np.sin(argument + self.phases[k, c])
        return out

    def on_grid(self, shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray:
        """Field values (C x *shape) at the voxel centres of a grid; same as ``__call__``.

        On a grid the phase of a plane wave is a sum of one term per axis, so ``e^{i phase}``
        is an outer product of three short complex vectors: no per-voxel sine, which makes a
        1 mm volume about ten times faster than evaluating :meth:`__call__` on its points.
        """
        axes = [np.arange(n, dtype=np.float64) for n in shape]
        out = np.zeros((self.amplitudes.shape[1], *shape), dtype=np.float64)
        for k in range(self.wavevectors.shape[0]):
            step = 2.0 * math.pi * (self.wavevectors[k] @ affine[:3, :3])  # phase per voxel
            start = 2.0 * math.pi * float(self.wavevectors[k] @ affine[:3, 3])
            ei = np.exp(1j * (axes[0] * step[0] + start))
            ej = np.exp(1j * axes[1] * step[1])
            ek = np.exp(1j * axes[2] * step[2])
            wave = ei[:, None, None] * ej[None, :, None] * ek[None, None, :]
            for c in range(out.shape[0]):
                # a sin(theta + phi) = Im(a e^{i phi} e^{i theta})
                coefficient = self.amplitudes[k, c] * np.exp(1j * self.phases[k, c])
                out[c] += coefficient.real * wave.imag + coefficient.imag * wave.real
        return out


@dataclass(frozen=True)
class Deformation:
    """A subject-to-template transform ``x = c + A (y + d(y) - c - t)`` (module docstring)."""

    centre: np.ndarray
    matrix: np.ndarray
    translation: np.ndarray
    waves: _Waves

    @classmethod
    def draw(
        cls,
        rng: np.random.Generator,
        sex: str,
        max_displacement: float = MAX_DISPLACEMENT_MM,
    ) -> Deformation:
        template = load_template()
        centre_ijk = (np.asarray(template.shape) - 1) / 2.0
        centre = template.affine[:3, :3] @ centre_ijk + template.affine[:3, 3]
        angles = np.radians(rng.uniform(-_MAX_ROTATION_DEG, _MAX_ROTATION_DEG, size=3))
        scale = rng.normal(_SCALE_MEAN.get(sex, 0.935), _SCALE_SD)
        scales = scale * (1.0 + rng.uniform(-_SCALE_ANISOTROPY, _SCALE_ANISOTROPY, size=3))
        translation = rng.uniform(-_MAX_TRANSLATION_MM, _MAX_TRANSLATION_MM, size=3)
        waves = _Waves.draw(rng, 3, _DEFORM_WAVELENGTH_MM, max_displacement)
        # Subject -> template: undo the subject's scale, then its rotation.
        matrix = _rotation(angles).T @ np.diag(1.0 / scales)
        return cls(centre=centre, matrix=matrix, translation=translation, waves=waves)

    def displacement(self, points: np.ndarray) -> np.ndarray:
        """The non-linear part ``d(y)`` (3 x N, mm) at subject positions ``points`` (3 x N)."""
        return self.waves(points)

    def __call__(self, points: np.ndarray) -> np.ndarray:
        """Template positions (3 x N, mm) of subject positions ``points`` (3 x N, mm)."""
        moved = points + self.displacement(points) - (self.centre + self.translation)[:, None]
        return self.centre[:, None] + self.matrix @ moved

    def on_grid(self, shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray:
        """Template positions (3 x N, mm) of a grid's voxel centres, in C order.

        The same numbers as ``self(grid_points(shape, affine))`` up to rounding, computed by
        broadcasting (the affine part) and :meth:`_Waves.on_grid` (the displacement).
        """
        linear = self.matrix @ affine[:3, :3]
        offset = self.centre + self.matrix @ (affine[:3, 3] - self.centre - self.translation)
        out = self.matrix @ self.waves.on_grid(shape, affine).reshape(3, -1)
        out = out.reshape(3, *shape)
        axes = [np.arange(n, dtype=np.float64) for n in shape]
        for r in range(3):
            out[r] += offset[r]
            out[r] += linear[r, 0] * axes[0][:, None, None]
            out[r] += linear[r, 1] * axes[1][None, :, None]
            out[r] += linear[r, 2] * axes[2][None, None, :]
        return out.reshape(3, -1)


def _rotation(angles: np.ndarray) -> np.ndarray:
    """Rotation matrix from three angles (radians) about x, then y, then z."""
    cx, cy, cz = np.cos(angles)
    sx, sy, sz = np.sin(angles)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


@dataclass(frozen=True)
class SimulatedSubject:
    """One simulated participant: demographics, scanner, and a deterministic random anatomy.

    ``seed`` is the *dataset's* seed; with ``label`` it seeds every random draw of this
    subject. Use :func:`draw_subject` to get the demographics the dataset writer would give.
    """

    label: str
    seed: int
    age: int
    sex: str
    field_strength: float
    manufacturer: str
    max_displacement: float = MAX_DISPLACEMENT_MM
    _cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def rng(self, *key: int) -> np.random.Generator:
        """A generator seeded by (dataset seed, label) and ``key`` (purpose, ...)."""
        sequence = np.random.SeedSequence(
            entropy=[self.seed, _label_number(self.label)], spawn_key=tuple(key)
        )
        return np.random.default_rng(sequence)

    @cached_property
    def deformation(self) -> Deformation:
        """This subject's subject-to-template transform."""
        return Deformation.draw(self.rng(_ANATOMY), self.sex, self.max_displacement)

    def _grid_key(self, voxel_size: float, head: bool) -> tuple[float, bool]:
        return round(float(voxel_size), 6), bool(head)

    def tissue_levels(self, voxel_size: float, head: bool = False) -> dict[str, np.ndarray]:
        """The warped anatomy as uint8 fraction levels (:func:`.anatomy.quantize_fractions`).

        This is what the dataset writer stores; :meth:`tissue_maps` is its float form. The grid
        (shape and affine) is the template's (:func:`.anatomy.grid_for`), the same for every
        subject and protocol; with ``head`` it is widened by :data:`.head.HEAD_MARGIN_MM` per
        side to leave room for the head. Cached per voxel size and grid.
        """
        key = self._grid_key(voxel_size, head)
        if key not in self._cache:
            margin = HEAD_MARGIN_MM if head else 0.0
            shape, affine = grid_for(key[0], margin_mm=margin)
            points = self.deformation.on_grid(shape, affine)
            continuous = sample_template(points, key[0], shape, affine)
            levels = quantize_fractions(continuous)
            self._cache[key] = (levels, dequantize_fractions(levels, affine))
        return self._cache[key][0]

    def head_levels(self, voxel_size: float) -> dict[str, np.ndarray]:
        """The head tissues around this subject's brain as uint8 levels (:mod:`.head`), cached.

        On the head grid of :meth:`tissue_levels` with ``head=True``.
        """
        key = ("head", round(float(voxel_size), 6))
        if key not in self._cache:
            levels = self.tissue_levels(voxel_size, head=True)
            self._cache[key] = head_levels(self.tissue_maps(voxel_size, head=True), levels)
        return self._cache[key]

    def clear_cache(self) -> None:
        """Forget the tissue maps computed so far (they are recomputed on demand)."""
        self._cache.clear()

    def tissue_maps(self, voxel_size: float, head: bool = False) -> TissueMaps:
        """The warped anatomy (GM, WM, CSF fractions) all this subject's scans are rendered from.

        ``head`` selects the wider grid of simulated heads; the brain is the same.
        """
        self.tissue_levels(voxel_size, head)
        return self._cache[self._grid_key(voxel_size, head)][1]

    def encoded_scan(
        self,
        protocol: Protocol,
        suffix: str,
        voxel_size: float,
        snr: float,
        *,
        run: int = 0,
        head: bool = False,
    ) -> nib.Nifti1Image:
        """A simulated scan (ground truth x bias field, plus Rician noise) as written to disk.

        The image is an in-memory int16 array with a ``scl_slope`` in its header. Saving it
        reproduces the bytes exactly, but its ``get_fdata()`` ignores the slope: to read the
        scaled values, load it back from its bytes (``nib.Nifti1Image.from_bytes(img.to_bytes())``).
        ``run`` distinguishes repeated scans of one suffix (it seeds bias and noise). The
        protocol's own field strength wins; without one the subject's scanner is used.

        ``head`` adds the non-brain tissues of :mod:`.head` around the brain; the noise level
        is set by the mean brain signal, with or without a head.

        Raises ``ValueError`` unless ``snr`` > 0.
        """
        if not snr > 0:
            raise ValueError(f"snr must be positive, got {snr!r}")
        maps = self.tissue_maps(voxel_size, head)
        clean = render(maps, protocol, suffix, self._field(protocol))
        mask = maps.brain_mask()
        mean_signal = float(clean[mask].mean()) if mask.any() else float(clean.mean())
        if head:
            extra = render_head(
                self.head_levels(voxel_size), protocol, suffix, self._field(protocol)
            )
            clean = clean + extra
        rng = self.rng(_SCAN, _label_number(suffix), run)
        bias_field = _Waves.draw(rng, 1, _BIAS_WAVELENGTH_MM, BIAS_AMPLITUDE)
        bias = np.exp(bias_field.on_grid(maps.shape, maps.affine)[0]).astype(np.float32)
        sigma = np.float32(mean_signal / snr)
        real = clean * bias + sigma * rng.standard_normal(maps.shape, dtype=np.float32)
        imaginary = sigma * rng.standard_normal(maps.shape, dtype=np.float32)
        noisy = np.sqrt(real * real + imaginary * imaginary)
        return scan_image(noisy, maps.affine, f"tumsyn-simulate {suffix}")

    def protocol_rng(self, suffix: str, run: int = 0) -> np.random.Generator:
        """The generator the dataset writer draws this subject's ``suffix`` protocol from."""
        return self.rng(_PROTOCOL, _label_number(suffix), run)

    def _field(self, protocol: Protocol) -> float:
        field_strength = protocol.magnetic_field_strength
        return float(field_strength if field_strength is not None else self.field_strength)


def draw_subject(label: str, seed: int, **overrides: object) -> SimulatedSubject:
    """The subject ``label`` of the dataset with ``seed``: demographics and scanner drawn at random.

    Age is a whole number of years in 20-80, sex ``M``/``F``, field strength 1.5 T or 3 T,
    manufacturer Siemens, GE or Philips, each uniform. ``overrides`` replace drawn values
    (e.g. ``field_strength=3.0``).
    """
    if int(seed) < 0:
        raise ValueError(f"the seed must be a non-negative integer, got {seed!r}")
    probe = SimulatedSubject(label, int(seed), 0, "F", 3.0, MANUFACTURERS[0])
    rng = probe.rng(_DEMOGRAPHICS)
    values: dict[str, object] = {
        "age": int(rng.integers(AGE_RANGE[0], AGE_RANGE[1] + 1)),
        "sex": str(rng.choice(["M", "F"])),
        "field_strength": float(rng.choice(FIELD_STRENGTHS)),
        "manufacturer": str(rng.choice(MANUFACTURERS)),
    }
    values.update(overrides)
    return SimulatedSubject(label=label, seed=int(seed), **values)  # type: ignore[arg-type]


def _finish_header(img: nib.Nifti1Image, affine: np.ndarray, description: str) -> None:
    img.header.set_xyzt_units("mm", "sec")
    img.header["descrip"] = description.encode()[:79]
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)


def scan_image(
    data: np.ndarray, affine: np.ndarray, description: str = "tumsyn-simulate"
) -> nib.Nifti1Image:
    """A non-negative image as int16 with a ``scl_slope`` that keeps its scanner units.

    The result is meant for saving (``to_bytes``, :func:`~tumsyn_bids.bids.io.
    atomic_save_nifti`): like any in-memory int16 image, its ``get_fdata()`` ignores the slope.

    Scanners write integers; the slope (intercept 0) makes the stored values read back as the
    simulated signal to within half a quantisation step (1/64000 of the maximum), far below
    the noise. Deterministic: the slope is a function of the data.
    """
    top = float(np.max(data)) if data.size else 0.0
    slope = float(np.float32(top / _INT16_TOP)) if top > 0 else 1.0
    levels = np.clip(np.rint(np.asarray(data, dtype=np.float64) / slope), 0, 32767)
    img = nib.Nifti1Image(levels.astype(np.int16), affine)
    img.header.set_slope_inter(slope, 0.0)
    _finish_header(img, affine, description)
    return img
