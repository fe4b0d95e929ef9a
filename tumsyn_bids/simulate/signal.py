"""MR signal equations: from tissue maps and a protocol to a noise-free image.

Everything here is plain numpy and vectorised: relaxation times may be scalars or arrays of any
shape. The equations are the textbook steady-state forms, which is what makes the simulator
useful for *learning how protocol parameters change contrast*: they are exact for their
idealised sequences and have the right monotonic dependence on TR, TE, TI and flip angle.
Idealisations common to all of them: perfect 90/180 degree pulses where a spin echo is
concerned, perfect spoiling of transverse coherence in gradient echoes, perfect inversion,
no magnetisation transfer, no diffusion or flow effects, one compartment per tissue.

Which equation a scan gets depends on the BIDS suffix and the protocol (:func:`sequence_for`):

============  ================================================================================
``SE``        spin echo / turbo spin echo (T2w, PDw): ``PD (1 - e^{-TR/T1}) e^{-TE/T2}``
``T2VAR``     3-D TSE with variable refocusing flip angles (SPACE, CUBE, VISTA; the authors'
              ``FlipAngle`` word ``"T2var"``): the spin-echo equation with an *effective*
              echo time of ``0.2 x TE``. The long echo trains of these sequences (nominal TE
              0.4-0.6 s) refocus along mixed spin-echo and stimulated-echo pathways, so the
              contrast at the k-space centre matches a conventional TSE of much shorter TE;
              0.2 maps the HCP T2w (TE 0.563 s) to about 0.11 s, the TE of a typical 2-D
              T2w TSE. This is an approximation, not an extended-phase-graph simulation.
``IR``        inversion recovery (FLAIR, STIR):
              ``PD |1 - 2 e^{-TI/T1} + e^{-TR/T1}| e^{-TE/T2}`` (magnitude image). With a
              ``"T2var"`` flip angle (3-D FLAIR) the effective TE rule above applies.
``GRE``       spoiled gradient echo (FLASH, T2starw, T1w without inversion):
              ``PD sin(a) (1 - E1) / (1 - cos(a) E1) e^{-TE/T2*}``, ``E1 = e^{-TR/T1}``
``MPRAGE``    magnetisation-prepared rapid gradient echo (T1w with an ``InversionTime``):
              see :func:`mprage`.
============  ================================================================================

Protocols use BIDS units, seconds and degrees (:class:`tumsyn_bids.prompts.protocol.Protocol`).
Images are in arbitrary "scanner units": :data:`SIGNAL_SCALE` is the signal of pure water (PD 1)
at full relaxation, zero echo time and a 90 degree excitation.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from ..prompts.protocol import T2VAR, Protocol
from .tissues import TISSUES, TissueParameters, tissue_parameters

if TYPE_CHECKING:
    from .anatomy import TissueMaps

__all__ = [
    "MPRAGE_ECHO_SPACING",
    "MPRAGE_READOUT_PULSES",
    "SIGNAL_SCALE",
    "SUFFIXES",
    "T2VAR",
    "T2VAR_TE_FACTOR",
    "inversion_recovery",
    "mprage",
    "render",
    "sequence_for",
    "signal_of",
    "spin_echo",
    "spoiled_gradient_echo",
    "tissue_signals",
]

#: Image value of pure water at full relaxation (see module docstring).
SIGNAL_SCALE = 1000.0

#: The BIDS suffixes the simulator can render.
SUFFIXES: tuple[str, ...] = ("T1w", "T2w", "FLAIR", "PDw", "T2starw")


#: Effective TE of a variable-flip-angle 3-D TSE, as a fraction of its nominal TE.
T2VAR_TE_FACTOR = 0.2

#: MPRAGE readout: RF pulses per inversion (one partition's k-space line count) ...
MPRAGE_READOUT_PULSES = 160
#: ... and their spacing in seconds (the "echo spacing"; BIDS has no field for it).
MPRAGE_ECHO_SPACING = 0.007

ArrayLike = Any  # numpy scalar or array; numpy broadcasting does the rest


# --------------------------------------------------------------------------------------------
# Signal equations (unscaled: PD 1 gives at most 1)
# --------------------------------------------------------------------------------------------


def spin_echo(pd: ArrayLike, t1: ArrayLike, t2: ArrayLike, tr: float, te: float) -> np.ndarray:
    """Spin echo with full refocusing: ``PD (1 - e^{-TR/T1}) e^{-TE/T2}``.

    The small correction for the longitudinal magnetisation the refocusing pulse flips at TE/2
    is neglected (TE << TR in every protocol we simulate).
    """
    pd, t1, t2 = np.asarray(pd), np.asarray(t1), np.asarray(t2)
    return pd * (1.0 - np.exp(-tr / t1)) * np.exp(-te / t2)


def inversion_recovery(
    pd: ArrayLike, t1: ArrayLike, t2: ArrayLike, tr: float, ti: float, te: float
) -> np.ndarray:
    """Magnitude inversion recovery: ``PD |1 - 2 e^{-TI/T1} + e^{-TR/T1}| e^{-TE/T2}``.

    The magnitude is what FLAIR images show: a tissue whose longitudinal magnetisation crosses
    zero at TI (CSF, for the FLAIR inversion times) is nulled whichever side it is on.
    """
    pd, t1, t2 = np.asarray(pd), np.asarray(t1), np.asarray(t2)
    mz = 1.0 - 2.0 * np.exp(-ti / t1) + np.exp(-tr / t1)
    return pd * np.abs(mz) * np.exp(-te / t2)


def spoiled_gradient_echo(
    pd: ArrayLike, t1: ArrayLike, t2star: ArrayLike, tr: float, te: float, flip_deg: float
) -> np.ndarray:
    """Spoiled gradient echo (FLASH) steady state: ``PD sin a (1-E1)/(1-cos a E1) e^{-TE/T2*}``."""
    pd, t1, t2star = np.asarray(pd), np.asarray(t1), np.asarray(t2star)
    alpha = math.radians(flip_deg)
    e1 = np.exp(-tr / t1)
    return pd * math.sin(alpha) * (1.0 - e1) / (1.0 - math.cos(alpha) * e1) * np.exp(-te / t2star)


def mprage(
    pd: ArrayLike,
    t1: ArrayLike,
    t2star: ArrayLike,
    tr: float,
    ti: float,
    te: float,
    flip_deg: float,
    *,
    echo_spacing: float = MPRAGE_ECHO_SPACING,
    readout_pulses: int = MPRAGE_READOUT_PULSES,
) -> np.ndarray:
    """A simplified steady-state MPRAGE: inversion, a FLASH readout train centred at TI, recovery.

    One cycle of length ``tr`` (the Siemens/BIDS convention: TR is the time between two
    inversions) holds: a perfect inversion; free recovery for ``TI - n/2 * esp``; a train of
    ``n`` pulses of ``flip_deg`` spaced ``esp`` apart, each tipping ``Mz -> Mz cos a`` and
    followed by recovery for ``esp``; free recovery until the next inversion. ``Mz`` before
    the inversion is solved for the periodic steady state in closed form (everything is linear
    in it), and the signal is ``PD sin(a) |Mz| e^{-TE/T2*}`` at the train's centre, where linear
    phase encoding puts the centre of k-space. Not modelled: the partition-direction blurring
    of the varying ``Mz`` across the train, and imperfect inversion.

    If ``tr`` is shorter than ``ti`` the protocol follows the GE/Philips convention (``tr`` is
    the spacing of the readout pulses, as for BRAVO or TFE): then ``esp = tr`` and the cycle
    ends straight after the readout train. ``n`` is reduced where the readout would not fit.
    """
    pd, t1, t2star = np.asarray(pd), np.asarray(t1), np.asarray(t2star)
    if tr <= ti:
        echo_spacing = tr
        n = max(2, min(readout_pulses, int(2.0 * ti / echo_spacing)))
        cycle = ti + n / 2.0 * echo_spacing
    else:
        margin = min(ti, tr - ti) * 0.05
        n_fit = int(2.0 * (min(ti, tr - ti) - margin) / echo_spacing)
        n = max(2, min(readout_pulses, n_fit))
        cycle = tr
    n -= n % 2
    before = max(ti - n / 2.0 * echo_spacing, 0.0)
    after = max(cycle - ti - n / 2.0 * echo_spacing, 0.0)

    alpha = math.radians(flip_deg)
    e_before = np.exp(-before / t1)
    e_after = np.exp(-after / t1)
    e_esp = np.exp(-echo_spacing / t1)
    a = math.cos(alpha) * e_esp  # Mz map of one pulse + spacing: Mz -> a Mz + b
    b = 1.0 - e_esp
    fixed = b / (1.0 - a)  # the train's own steady state
    a_n = a**n
    # M_pre: before inversion. After inversion and recovery: M_b = (1 - e_before) - e_before M_pre.
    # After the train: M_c = fixed (1 - a^n) + a^n M_b. Next cycle: M_pre = 1 - e_after (1 - M_c).
    m_pre = (1.0 - e_after + e_after * fixed * (1.0 - a_n) + e_after * a_n * (1.0 - e_before)) / (
        1.0 + e_after * a_n * e_before
    )
    m_b = (1.0 - e_before) - e_before * m_pre
    m_centre = fixed + a ** (n // 2) * (m_b - fixed)
    return pd * math.sin(alpha) * np.abs(m_centre) * np.exp(-te / t2star)


# --------------------------------------------------------------------------------------------
# Protocol -> equation
# --------------------------------------------------------------------------------------------


def _is_t2var(flip_angle: float | str | None) -> bool:
    return isinstance(flip_angle, str) and flip_angle.strip().lower() == T2VAR.lower()


def sequence_for(protocol: Protocol, suffix: str) -> str:
    """The signal model for a scan: ``SE``, ``T2VAR``, ``IR``, ``GRE`` or ``MPRAGE``.

    T1w is MPRAGE when the protocol has an inversion time and spoiled GRE otherwise; T2w and
    PDw are spin echo (``T2VAR`` when the flip angle is the word ``"T2var"``); FLAIR is
    inversion recovery; T2starw is spoiled GRE.
    """
    if suffix not in SUFFIXES:
        raise ValueError(f"cannot simulate {suffix!r} images; choose from {', '.join(SUFFIXES)}")
    if suffix == "T1w":
        return "MPRAGE" if protocol.inversion_time else "GRE"
    if suffix == "FLAIR":
        return "IR"
    if suffix == "T2starw":
        return "GRE"
    return T2VAR.upper() if _is_t2var(protocol.flip_angle) else "SE"


def _require(protocol: Protocol, suffix: str, *names: str) -> None:
    missing = [n for n in names if getattr(protocol, n) is None]
    if missing:
        raise ValueError(
            f"cannot simulate a {suffix} image without {', '.join(missing)} in the protocol"
        )


def _numeric_flip(protocol: Protocol, suffix: str) -> float:
    _require(protocol, suffix, "flip_angle")
    if isinstance(protocol.flip_angle, str):
        raise ValueError(
            f"a {suffix} gradient-echo protocol needs a numeric flip angle, "
            f"got {protocol.flip_angle!r}"
        )
    return float(protocol.flip_angle)


def _signal(params: TissueParameters, protocol: Protocol, suffix: str) -> float:
    """The unscaled signal of one pure tissue."""
    model = sequence_for(protocol, suffix)
    p = protocol
    te = p.echo_time if p.echo_time is not None else 0.0
    if model in ("SE", "T2VAR"):
        _require(p, suffix, "repetition_time")
        if model == "T2VAR":
            te = te * T2VAR_TE_FACTOR
        return float(spin_echo(params.pd, params.t1, params.t2, p.repetition_time, te))
    if model == "IR":
        _require(p, suffix, "repetition_time", "inversion_time")
        if _is_t2var(p.flip_angle):
            te = te * T2VAR_TE_FACTOR
        return float(
            inversion_recovery(
                params.pd, params.t1, params.t2, p.repetition_time, p.inversion_time, te
            )
        )
    if model == "GRE":
        _require(p, suffix, "repetition_time")
        flip = _numeric_flip(p, suffix)
        return float(
            spoiled_gradient_echo(params.pd, params.t1, params.t2star, p.repetition_time, te, flip)
        )
    _require(p, suffix, "repetition_time", "inversion_time")
    flip = _numeric_flip(p, suffix)
    return float(
        mprage(params.pd, params.t1, params.t2star, p.repetition_time, p.inversion_time, te, flip)
    )


def _field(protocol: Protocol, field_strength: float | None) -> float:
    field = field_strength if field_strength is not None else protocol.magnetic_field_strength
    if field is None:
        raise ValueError(
            "the field strength is unknown: give field_strength or set "
            "magnetic_field_strength in the protocol"
        )
    return float(field)


def signal_of(params: TissueParameters, protocol: Protocol, suffix: str) -> float:
    """The signal (scanner units) of one pure tissue with ``params`` under ``protocol``."""
    return SIGNAL_SCALE * _signal(params, protocol, suffix)


def tissue_signals(
    protocol: Protocol, suffix: str, field_strength: float | None = None
) -> dict[str, float]:
    """Signal of each pure tissue (:data:`~.tissues.TISSUES`) in scanner units.

    ``field_strength`` (tesla) overrides the protocol's ``magnetic_field_strength``.
    """
    params = tissue_parameters(_field(protocol, field_strength))
    return {t: signal_of(params[t], protocol, suffix) for t in TISSUES}


def render(
    tissue_maps: TissueMaps | Mapping[str, np.ndarray],
    protocol: Protocol,
    suffix: str,
    field_strength: float | None = None,
) -> np.ndarray:
    """The noise-free, bias-free image (float32) of ``protocol`` for these tissue fractions.

    Partial volume mixes linearly: ``image = sum_t fraction_t * S_t``, with ``S_t`` from
    :func:`tissue_signals`. Each tissue is uniform, so this costs one multiply-add per tissue
    whatever the protocol. ``tissue_maps`` is a :class:`~.anatomy.TissueMaps` or a mapping
    from ``"GM"``, ``"WM"``, ``"CSF"`` to arrays of one shape; a missing class counts as zero.
    """
    fractions = tissue_maps.fractions() if hasattr(tissue_maps, "fractions") else tissue_maps
    if not any(t in fractions for t in TISSUES):
        raise ValueError(f"tissue_maps holds none of {', '.join(TISSUES)}")
    signals = tissue_signals(protocol, suffix, field_strength)
    shape = next(np.shape(fractions[t]) for t in TISSUES if t in fractions)
    image = np.zeros(shape, dtype=np.float32)
    for tissue in TISSUES:
        if tissue in fractions:
            image += np.float32(signals[tissue]) * np.asarray(fractions[tissue], dtype=np.float32)
    return image
