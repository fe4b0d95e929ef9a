"""Signal equations and tissue parameters: hand-computed values and contrast orderings."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tumsyn_bids.prompts.protocol import Protocol
from tumsyn_bids.simulate.protocols import csf_null_inversion_time
from tumsyn_bids.simulate.signal import (
    SIGNAL_SCALE,
    inversion_recovery,
    mprage,
    render,
    sequence_for,
    spin_echo,
    spoiled_gradient_echo,
    tissue_signals,
)
from tumsyn_bids.simulate.tissues import tissue_parameters


def test_spin_echo_by_hand() -> None:
    # GM at 3 T (PD 0.8, T1 1.45 s, T2 0.095 s), TR 3 s, TE 0.1 s:
    # 0.8 * (1 - e^(-3/1.45)) * e^(-0.1/0.095) = 0.8 * 0.873684 * 0.349018 = 0.243945
    assert spin_echo(0.8, 1.45, 0.095, tr=3.0, te=0.1) == pytest.approx(0.243945, rel=1e-5)


def test_inversion_recovery_by_hand() -> None:
    # WM at 3 T (PD 0.7, T1 0.9 s, T2 0.075 s), TR 9 s, TI 2.5 s, TE 0.081 s:
    # 0.7 * |1 - 2 e^(-2.7778) + e^(-10)| * e^(-1.08) = 0.7 * 0.875692 * 0.339596 = 0.208167
    value = inversion_recovery(0.7, 0.9, 0.075, tr=9.0, ti=2.5, te=0.081)
    assert value == pytest.approx(0.208167, rel=1e-4)


def test_spoiled_gradient_echo_by_hand() -> None:
    # WM at 3 T (PD 0.7, T1 0.9 s, T2* 0.053 s), TR 20 ms, TE 4 ms, FA 25 deg:
    # E1 = e^(-0.02/0.9) = 0.978023; 0.7 * sin25 * (1 - E1) / (1 - cos25 * E1) * e^(-4/53)
    # = 0.7 * 0.422618 * 0.021977 / 0.113610 * 0.927306 = 0.053067
    value = spoiled_gradient_echo(0.7, 0.9, 0.053, tr=0.02, te=0.004, flip_deg=25.0)
    assert value == pytest.approx(0.053067, rel=1e-4)


def test_tissue_signals_use_the_literature_table() -> None:
    protocol = Protocol(repetition_time=3.0, echo_time=0.1, flip_angle=90.0)
    gm = tissue_signals(protocol, "T2w", field_strength=3.0)["GM"]
    assert gm == pytest.approx(SIGNAL_SCALE * 0.243945, rel=1e-5)


def test_equations_are_vectorised() -> None:
    t1 = np.array([[0.9, 1.45], [4.3, 1.0]])
    out = spin_echo(0.8, t1, 0.1, tr=3.0, te=0.1)
    assert out.shape == (2, 2)
    assert out[0, 1] == pytest.approx(float(spin_echo(0.8, 1.45, 0.1, tr=3.0, te=0.1)))


# Representative protocols per suffix (BIDS units).
T1W = Protocol(repetition_time=2.3, echo_time=0.00298, inversion_time=0.9, flip_angle=9.0)
T1W_GRE = Protocol(repetition_time=0.02, echo_time=0.004, flip_angle=25.0)
T2W = Protocol(repetition_time=4.0, echo_time=0.1, flip_angle=150.0)
T2VAR = Protocol(repetition_time=3.2, echo_time=0.563, flip_angle="T2var")
FLAIR = Protocol(repetition_time=9.0, echo_time=0.081, inversion_time=2.5, flip_angle=150.0)
PDW = Protocol(repetition_time=4.0, echo_time=0.03, flip_angle=90.0)
T2STAR = Protocol(repetition_time=0.65, echo_time=0.02, flip_angle=20.0)


def _signals(protocol: Protocol, suffix: str, field: float = 3.0) -> tuple[float, float, float]:
    s = tissue_signals(protocol, suffix, field)
    return s["GM"], s["WM"], s["CSF"]


@pytest.mark.parametrize("field", [1.5, 3.0])
@pytest.mark.parametrize("protocol", [T1W, T1W_GRE], ids=["mprage", "spgr"])
def test_t1w_wm_brighter_than_gm_brighter_than_csf(protocol: Protocol, field: float) -> None:
    gm, wm, csf = _signals(protocol, "T1w", field)
    assert wm > gm > csf


@pytest.mark.parametrize("protocol", [T2W, T2VAR], ids=["tse", "t2var"])
def test_t2w_csf_brighter_than_gm_brighter_than_wm(protocol: Protocol) -> None:
    gm, wm, csf = _signals(protocol, "T2w")
    assert csf > gm > wm


def test_flair_nulls_csf() -> None:
    gm, wm, csf = _signals(FLAIR, "FLAIR")
    assert gm > wm > csf
    assert csf < 0.1 * wm


def test_flair_at_the_computed_null_has_no_csf_signal() -> None:
    ti = csf_null_inversion_time(8.0, 3.0)
    protocol = Protocol(repetition_time=8.0, echo_time=0.09, inversion_time=ti, flip_angle=150)
    assert _signals(protocol, "FLAIR")[2] == pytest.approx(0.0, abs=1e-9)


def test_pdw_csf_at_least_gm_brighter_than_wm() -> None:
    gm, wm, csf = _signals(PDW, "PDw")
    assert csf >= gm > wm


def test_t2starw_csf_brighter_than_gm_brighter_than_wm() -> None:
    gm, wm, csf = _signals(T2STAR, "T2starw")
    assert csf > gm > wm


def test_longer_te_raises_the_csf_to_wm_ratio() -> None:
    ratios = []
    for te in (0.06, 0.09, 0.12, 0.15):
        _, wm, csf = _signals(Protocol(repetition_time=4.0, echo_time=te, flip_angle=150), "T2w")
        ratios.append(csf / wm)
    assert ratios == sorted(ratios) and ratios[0] < ratios[-1]


def test_t2var_is_spin_echo_with_a_fifth_of_the_echo_time() -> None:
    se = Protocol(repetition_time=3.2, echo_time=0.563 * 0.2, flip_angle=120.0)
    assert tissue_signals(T2VAR, "T2w", 3.0) == pytest.approx(tissue_signals(se, "T2w", 3.0))


@pytest.mark.parametrize("tr,ti", [(1.8, 0.8), (2.5, 1.0), (2.6, 1.2), (0.008, 0.45)])
def test_mprage_ordering_over_the_sampled_range(tr: float, ti: float) -> None:
    # (0.008, 0.45): the GE/Philips convention, TR is the readout spacing.
    for field in (1.5, 3.0):
        p = tissue_parameters(field)
        gm, wm, csf = (float(mprage(q.pd, q.t1, q.t2star, tr, ti, 0.003, 9.0)) for q in p.values())
        assert wm > gm > csf


def test_sequence_choice() -> None:
    assert sequence_for(T1W, "T1w") == "MPRAGE"
    assert sequence_for(T1W_GRE, "T1w") == "GRE"
    assert sequence_for(T2W, "T2w") == "SE"
    assert sequence_for(T2VAR, "T2w") == "T2VAR"
    assert sequence_for(FLAIR, "FLAIR") == "IR"
    assert sequence_for(PDW, "PDw") == "SE"
    assert sequence_for(T2STAR, "T2starw") == "GRE"
    with pytest.raises(ValueError, match="cannot simulate"):
        sequence_for(T2W, "dwi")


def test_missing_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match="inversion_time"):
        tissue_signals(Protocol(repetition_time=9.0, echo_time=0.08), "FLAIR", 3.0)
    with pytest.raises(ValueError, match="field strength"):
        tissue_signals(T2W, "T2w")
    with pytest.raises(ValueError, match="numeric flip angle"):
        tissue_signals(
            Protocol(repetition_time=0.5, echo_time=0.02, flip_angle="T2var"), "T2starw", 3
        )


def test_protocol_field_strength_is_used_when_no_override() -> None:
    at3 = Protocol(repetition_time=4.0, echo_time=0.1, flip_angle=150.0, magnetic_field_strength=3)
    assert tissue_signals(at3, "T2w") == tissue_signals(T2W, "T2w", 3.0)


def test_render_mixes_partial_volumes_linearly() -> None:
    maps = {
        "GM": np.array([1.0, 0.0, 0.5, 0.0], dtype=np.float32),
        "WM": np.array([0.0, 1.0, 0.5, 0.0], dtype=np.float32),
        "CSF": np.array([0.0, 0.0, 0.0, 0.0], dtype=np.float32),
    }
    image = render(maps, T2W, "T2w", 3.0)
    assert image.dtype == np.float32
    assert image[2] == pytest.approx((image[0] + image[1]) / 2, rel=1e-6)
    assert image[3] == 0.0


def test_tissue_parameters_anchor_and_interpolate() -> None:
    at15, at3 = tissue_parameters(1.5), tissue_parameters(3.0)
    assert at3["WM"].t1 == 0.90 and at3["GM"].t2star == 0.066 and at3["CSF"].pd == 1.0
    mid = tissue_parameters(2.0)
    for tissue in ("GM", "WM"):
        assert at15[tissue].t1 < mid[tissue].t1 < at3[tissue].t1
        assert at15[tissue].t2star > mid[tissue].t2star > at3[tissue].t2star
    # T2* at 1.5 T follows from R2' halving: 1/T2* = 1/T2 + (1/0.066 - 1/0.095) / 2.
    expected = 1.0 / (1.0 / 0.100 + (1.0 / 0.066 - 1.0 / 0.095) / 2.0)
    assert at15["GM"].t2star == pytest.approx(expected)
    assert at15["GM"].t2star > at3["GM"].t2star
    with pytest.raises(ValueError, match="outside"):
        tissue_parameters(30.0)
    assert math.isfinite(tissue_parameters(7.0)["WM"].t1)
