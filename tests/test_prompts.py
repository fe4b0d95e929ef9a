"""Tests for tumsyn_bids.prompts: published examples, every rendering rule, the validator."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tumsyn_bids.prompts.protocol import (
    Demographics,
    Protocol,
    check_timing,
    protocol_from_sidecar,
    repetition_time_field,
)
from tumsyn_bids.prompts.template import (
    PROMPT_TEMPLATE,
    build_prompt,
    parse_prompt,
    target_prompt,
    validate_prompt,
)
from tumsyn_bids.prompts.values import (
    PromptError,
    format_age,
    format_field_strength,
    format_flip_angle,
    format_ms,
    format_voxel_size,
    normalize_sex,
    normalize_vendor,
    parse_age,
    seconds_to_ms,
)

PARAMS = "Imaging parameter TR(ms), TE(ms), TI(ms), and FA(degree):  "

# Published by the TUMSyn authors (README and Experimental_data prompt files), verbatim.
PUBLISHED_T2W_16F = (
    "Age: 16; Gender: F; Scanner: 3.0 Siemens; Modality: T2w; Voxel size: (0.8, 0.8, 0.8); "
    "Imaging parameter TR(ms), TE(ms), TI(ms), and FA(degree):  (3200.0, 563.0, None, T2var)"
)
PUBLISHED_T1W_16F = (
    "Age: 16; Gender: F; Scanner: 3.0 Siemens; Modality: T1w; Voxel size: (0.8, 0.8, 0.8); "
    "Imaging parameter TR(ms), TE(ms), TI(ms), and FA(degree):  (2500.0, 2.2, 1000.0, 8.0)"
)
PUBLISHED_T1W_12M = (
    "Age: 12; Gender: M; Scanner: 3.0 Siemens; Modality: T1w; Voxel size: (0.8, 0.8, 0.8); "
    "Imaging parameter TR(ms), TE(ms), TI(ms), and FA(degree):  (2500.0, 2.2, 1000.0, 8.0)"
)

# HCP-D style sidecars (seconds) and float32 header zooms, as a BIDS dataset would provide them.
HCPD_T1W = {
    "RepetitionTime": 2.5,
    "EchoTime": 0.0022,
    "InversionTime": 1.0,
    "FlipAngle": 8,
    "MagneticFieldStrength": 3,
    "Manufacturer": "Siemens",
}
HCPD_T2W = {
    "RepetitionTime": 3.2,
    "EchoTime": 0.563,
    "FlipAngle": "T2var",
    "MagneticFieldStrength": 3,
    "Manufacturer": "Siemens",
}
ZOOMS_08 = tuple(float(np.float32(0.8)) for _ in range(3))  # 0.800000011920929 each


# ------------------------------------------------------------------------------ published


@pytest.mark.parametrize(
    ("sidecar", "modality", "age", "sex", "expected"),
    [
        (HCPD_T2W, "T2w", 16, "F", PUBLISHED_T2W_16F),
        (HCPD_T1W, "T1w", 16, "F", PUBLISHED_T1W_16F),
        (HCPD_T1W, "T1w", 12, "M", PUBLISHED_T1W_12M),
    ],
)
def test_published_examples_from_sidecars(sidecar, modality, age, sex, expected):
    protocol = protocol_from_sidecar(sidecar, voxel_size=ZOOMS_08)
    prompt = build_prompt(modality, protocol, Demographics(age=age, sex=sex))
    assert prompt == expected


def test_published_examples_from_participants_tsv_spellings():
    # participants.tsv cells are strings; sidecar vendor in DICOM capitals.
    sidecar = dict(HCPD_T1W, Manufacturer="SIEMENS", MagneticFieldStrength=2.89)
    protocol = protocol_from_sidecar(sidecar)
    prompt = build_prompt("T1w", protocol, Demographics(age="12", sex="male"), ZOOMS_08)
    assert prompt == PUBLISHED_T1W_12M


def test_template_has_two_spaces_after_fa():
    assert "FA(degree):  (" in PROMPT_TEMPLATE
    assert PUBLISHED_T1W_16F.count("FA(degree):  (") == 1


def test_published_examples_parse_and_validate():
    for prompt in (PUBLISHED_T2W_16F, PUBLISHED_T1W_16F, PUBLISHED_T1W_12M):
        validate_prompt(prompt)
    slots = parse_prompt(PUBLISHED_T2W_16F)
    assert slots == {
        "age": "16",
        "sex": "F",
        "field": "3.0",
        "vendor": "Siemens",
        "modality": "T2w",
        "x": "0.8",
        "y": "0.8",
        "z": "0.8",
        "tr": "3200.0",
        "te": "563.0",
        "ti": "None",
        "fa": "T2var",
    }


# ------------------------------------------------------------------------------ times


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (2.5, "2500.0"),
        (0.0022, "2.2"),
        (0.00298, "2.98"),  # never 2.9799999999999995, never 3.0
        (0.00201, "2.01"),  # 0.00201 * 1000 == 2.0100000000000002 in binary
        (0.563, "563.0"),
        (0.9, "900.0"),
        (2.25, "2250.0"),
        (5, "5000.0"),  # ints become floats
        (0.00185, "1.85"),
        (0.123456, "123.456"),
        (0.0000074, "0.0074"),
        (None, "None"),
    ],
)
def test_times_seconds_to_ms(seconds, text):
    assert format_ms(seconds) == text


def test_seconds_to_ms_keeps_information():
    assert seconds_to_ms(0.00298) == 2.98
    assert seconds_to_ms(0.0029812345) == 2.9812345
    assert seconds_to_ms(None) is None
    assert seconds_to_ms(1.0) == 1000.0


def test_multi_echo_uses_first_echo():
    protocol = protocol_from_sidecar(
        {"EchoTime": [0.00185, 0.004, 0.00615], "RepetitionTime": 0.02}
    )
    assert protocol.echo_time == 0.00185
    prompt = build_prompt("T1w", protocol)
    assert prompt.endswith(PARAMS + "(20.0, 1.85, None, None)")


def test_empty_echo_list_is_missing():
    assert Protocol(echo_time=[]).echo_time is None


def test_numeric_strings_and_na_in_sidecar():
    protocol = protocol_from_sidecar({"RepetitionTime": "2.3", "EchoTime": "n/a", "FlipAngle": "9"})
    assert protocol.repetition_time == 2.3
    assert protocol.echo_time is None
    assert protocol.flip_angle == 9.0


def test_non_numeric_time_raises():
    with pytest.raises(PromptError, match="RepetitionTime"):
        Protocol(repetition_time="fast")
    with pytest.raises(PromptError, match="EchoTime"):
        Protocol(echo_time=True)


def test_times_in_milliseconds_are_rejected():
    with pytest.raises(PromptError, match="seconds"):
        build_prompt("T1w", Protocol(repetition_time=2300))
    with pytest.raises(PromptError, match="EchoTime"):
        build_prompt("T1w", Protocol(echo_time=30))


# ------------------------------------------------------------------------------ timing units
# Issue 18 item 1: a time in ms written into a BIDS seconds field is refused with one line that
# names the field and the likely unit mistake. Expected texts are written by hand.


def test_echo_time_in_ms_longer_than_tr_is_refused():
    # The smallest input that showed it: "EchoTime": 2.98 (ms) next to "RepetitionTime": 2.3 (s).
    with pytest.raises(PromptError) as caught:
        protocol_from_sidecar({"RepetitionTime": 2.3, "EchoTime": 2.98})
    assert str(caught.value) == (
        "EchoTime 2.98 s is longer than RepetitionTime 2.3 s; BIDS wants seconds: "
        "was 2.98 ms meant (0.00298)?"
    )


@pytest.mark.parametrize(
    ("sidecar", "message"),
    [
        # TE in ms below TR in s: only the range can tell (MPRAGE TR 2.5 s, TE 2.3 ms)
        (
            {"RepetitionTime": 2.5, "EchoTime": 2.3},
            "EchoTime 2.3 s is longer than any plausible EchoTime (1 s); BIDS wants seconds: "
            "was 2.3 ms meant (0.0023)?",
        ),
        # FLAIR TE 81 ms: the comparison with TR comes first
        (
            {"RepetitionTime": 9.0, "EchoTime": 81, "InversionTime": 2.5},
            "EchoTime 81 s is longer than RepetitionTime 9 s; BIDS wants seconds: "
            "was 81 ms meant (0.081)?",
        ),
        # TE in ms without a TR: the range alone
        (
            {"EchoTime": 81},
            "EchoTime 81 s is longer than any plausible EchoTime (1 s); BIDS wants seconds: "
            "was 81 ms meant (0.081)?",
        ),
        # TR in ms
        (
            {"RepetitionTime": 2300, "EchoTime": 0.00298},
            "RepetitionTime 2300 s is longer than any plausible RepetitionTime (20 s); "
            "BIDS wants seconds: was 2300 ms meant (2.3)?",
        ),
        # TI in ms, with a readout TR (GE, Philips) and with the inversion TR (Siemens)
        (
            {"RepetitionTime": 0.0081, "InversionTime": 900},
            "InversionTime 900 s is longer than any plausible InversionTime (10 s); "
            "BIDS wants seconds: was 900 ms meant (0.9)?",
        ),
        (
            {"RepetitionTime": 2.3, "InversionTime": 900},
            "InversionTime 900 s is longer than RepetitionTime 2.3 s; "
            "BIDS wants seconds: was 900 ms meant (0.9)?",
        ),
        # TI not shorter than the (inversion-to-inversion) TR
        (
            {"RepetitionTime": 2.3, "InversionTime": 2.5},
            "InversionTime 2.5 s is longer than RepetitionTime 2.3 s; BIDS wants seconds: "
            "was 2.5 ms meant (0.0025)?",
        ),
        # one echo of a multi-echo list in ms
        (
            {"RepetitionTime": 0.05, "EchoTime": [0.004, 0.008, 12.0]},
            "EchoTime 12 s is longer than RepetitionTime 0.05 s; BIDS wants seconds: "
            "was 12 ms meant (0.012)?",
        ),
        # MP2RAGE: RepetitionTimePreparation in ms
        (
            {"RepetitionTimePreparation": 5000, "EchoTime": 0.0029},
            "RepetitionTimePreparation 5000 s is longer than any plausible "
            "RepetitionTimePreparation (20 s); BIDS wants seconds: was 5000 ms meant (5)?",
        ),
        # MP2RAGE: TI checked against RepetitionTimePreparation when there is no RepetitionTime
        (
            {"RepetitionTimePreparation": 5.0, "InversionTime": 7.0},
            "InversionTime 7 s is longer than RepetitionTimePreparation 5 s; BIDS wants "
            "seconds: was 7 ms meant (0.007)?",
        ),
        # a value that is not milliseconds either: no guess, but the unit rule
        (
            {"RepetitionTime": 2.0e6},
            "RepetitionTime 2e+06 s is longer than any plausible RepetitionTime (20 s); "
            "BIDS wants seconds: check the sidecar's units",
        ),
        ({"RepetitionTime": 0}, "RepetitionTime 0 s is not positive"),
        ({"EchoTime": -0.001}, "EchoTime -0.001 s is negative"),
    ],
)
def test_implausible_timing_is_refused_with_the_likely_mistake(sidecar, message):
    with pytest.raises(PromptError) as caught:
        check_timing(sidecar)
    assert str(caught.value) == message
    with pytest.raises(PromptError) as caught:
        protocol_from_sidecar(sidecar)
    assert str(caught.value) == message


@pytest.mark.parametrize(
    "sidecar",
    [
        {"RepetitionTime": 2.3, "EchoTime": 0.00298, "InversionTime": 0.9},  # Siemens MPRAGE
        # GE BRAVO / Philips 3-D TFE: RepetitionTime is the readout TR, TI exceeds it
        {"RepetitionTime": 0.0082, "EchoTime": 0.0032, "InversionTime": 0.45},
        {"RepetitionTime": 3.2, "EchoTime": 0.565},  # HCP T2w SPACE
        {"RepetitionTime": 9.0, "EchoTime": 0.081, "InversionTime": 2.5},  # 2-D FLAIR
        {"RepetitionTime": 0.02, "EchoTime": 0.0},  # zero TE (ZTE)
        {"RepetitionTime": 4.0, "EchoTime": 0.1, "InversionTime": 0},  # Philips: 0 = none
        {"RepetitionTimePreparation": 5.0, "EchoTime": 0.0029, "InversionTime": 0.7},  # MP2RAGE
        {"RepetitionTime": "n/a", "EchoTime": None},
        {},
    ],
)
def test_plausible_timing_passes(sidecar):
    check_timing(sidecar)
    protocol_from_sidecar(sidecar)


def test_unchecked_protocol_keeps_the_refused_values():
    protocol = protocol_from_sidecar({"RepetitionTime": 2.3, "EchoTime": 2.98}, check=False)
    assert protocol.echo_time == 2.98
    with pytest.raises(PromptError, match="EchoTime 2.98 s is longer than RepetitionTime"):
        build_prompt("T1w", protocol)  # a Protocol built in code passes the same check


# Issue 18 item 4: MP2RAGE sidecars carry RepetitionTimePreparation instead of RepetitionTime.


@pytest.mark.parametrize(
    ("sidecar", "field", "tr_ms"),
    [
        (
            {"RepetitionTimePreparation": 5.0, "EchoTime": 0.0029},
            "RepetitionTimePreparation",
            5000.0,
        ),
        (
            {"RepetitionTime": "n/a", "RepetitionTimePreparation": 4.0},
            "RepetitionTimePreparation",
            4000.0,
        ),
        ({"RepetitionTime": 2.3, "RepetitionTimePreparation": 5.0}, "RepetitionTime", 2300.0),
        ({"RepetitionTimeExcitation": 0.0072}, None, None),  # the readout TR is not the TR
    ],
)
def test_repetition_time_preparation_when_repetition_time_is_absent(sidecar, field, tr_ms):
    assert repetition_time_field(sidecar) == field
    protocol = protocol_from_sidecar(sidecar)
    assert seconds_to_ms(protocol.repetition_time) == tr_ms
    assert build_prompt("T1w", protocol).startswith("Age: None")


def test_negative_or_infinite_times_rejected():
    with pytest.raises(PromptError, match="negative"):
        build_prompt("T1w", Protocol(echo_time=-0.001))
    with pytest.raises(PromptError, match="finite"):
        build_prompt("T1w", Protocol(repetition_time=math.inf))


def test_nan_time_is_missing():
    assert Protocol(repetition_time=float("nan")).repetition_time is None


# ------------------------------------------------------------------------------ flip angle


@pytest.mark.parametrize(
    ("value", "text"),
    [(8, "8.0"), (8.0, "8.0"), (9, "9.0"), (12.5, "12.5"), ("T2var", "T2var"), (None, "None")],
)
def test_flip_angle_rendering(value, text):
    assert format_flip_angle(Protocol(flip_angle=value).flip_angle) == text


def test_string_flip_angles():
    assert Protocol(flip_angle=" T2var ").flip_angle == "T2var"
    assert Protocol(flip_angle="8").flip_angle == 8.0  # numeric strings are numbers
    assert Protocol(flip_angle="n/a").flip_angle is None
    assert Protocol(flip_angle=[90, 180]).flip_angle == 90.0
    prompt = build_prompt("T2w", Protocol(flip_angle="variable"))
    assert prompt.endswith("(None, None, None, variable)")


def test_flip_angle_validation():
    with pytest.raises(PromptError, match="separators"):
        build_prompt("T2w", Protocol(flip_angle="T2, var"))
    with pytest.raises(PromptError, match="implausible"):
        build_prompt("T1w", Protocol(flip_angle=720))


# ------------------------------------------------------------------------------ field strength


@pytest.mark.parametrize(
    ("tesla", "text"),
    [
        (3, "3.0"),
        (3.0, "3.0"),
        (2.89, "3.0"),  # Siemens Prisma/Skyra report 2.89 T
        (1.5, "1.5"),
        (1.494, "1.5"),
        (7, "7.0"),
        (6.98, "7.0"),
        (0.55, "0.55"),
        (9.4, "9.4"),
        (2.0, "2.0"),  # not near a nominal value: kept
        (None, "None"),
    ],
)
def test_field_strength(tesla, text):
    assert format_field_strength(tesla) == text


# ------------------------------------------------------------------------------ scanner slot


@pytest.mark.parametrize(
    ("field", "manufacturer", "scanner"),
    [
        (3, "Siemens", "3.0 Siemens"),
        (None, "Siemens", "None Siemens"),
        (3, None, "3.0 None"),
        (None, None, "None None"),
        (1.5, "GE MEDICAL SYSTEMS", "1.5 GE"),
    ],
)
def test_scanner_rendering(field, manufacturer, scanner):
    protocol = Protocol(magnetic_field_strength=field, manufacturer=manufacturer)
    assert f"; Scanner: {scanner}; " in build_prompt("T1w", protocol)


# ------------------------------------------------------------------------------ vendors


@pytest.mark.parametrize(
    ("raw", "vendor"),
    [
        ("Siemens", "Siemens"),
        ("SIEMENS", "Siemens"),
        ("siemens", "Siemens"),
        ("Siemens Healthineers", "Siemens"),
        ("SIEMENS HEALTHINEERS", "Siemens"),
        ("Siemens Healthcare GmbH", "Siemens"),
        ("GE", "GE"),
        ("ge", "GE"),
        ("GE MEDICAL SYSTEMS", "GE"),
        ("GE Healthcare", "GE"),
        ("GE HealthCare", "GE"),
        ("General Electric", "GE"),
        ("Philips", "Philips"),
        ("PHILIPS", "Philips"),
        ("Philips Medical Systems", "Philips"),
        ("Philips Healthcare", "Philips"),
        ("Philips Medical Systems Nederland B.V.", "Philips"),
        ("Canon", "Canon"),
        ("Canon Medical Systems", "Canon"),
        ("CANON_MEC", "Canon"),
        ("Toshiba", "Toshiba"),
        ("TOSHIBA", "Toshiba"),
        ("TOSHIBA_MEC", "Toshiba"),
        ("Hitachi Medical Corporation", "Hitachi"),
        ("  Siemens  ", "Siemens"),
    ],
)
def test_known_vendor_spellings(raw, vendor):
    assert normalize_vendor(raw) == vendor


@pytest.mark.parametrize(
    ("raw", "vendor"),
    [
        ("UNITED IMAGING HEALTHCARE", "United Imaging Healthcare"),
        ("united imaging", "United Imaging"),
        ("UIH", "UIH"),  # short all-caps acronyms are kept
        ("Bruker BioSpin", "Bruker BioSpin"),  # deliberate mixed case is kept
        ("ESAOTE", "Esaote"),
        ("Hyperfine", "Hyperfine"),
        ("GEMINI Scanners", "Gemini Scanners"),  # "ge" must be a whole word
    ],
)
def test_unknown_vendors_pass_through(raw, vendor):
    assert normalize_vendor(raw) == vendor


@pytest.mark.parametrize("raw", [None, "", "   ", "n/a", "N/A", "unknown"])
def test_missing_vendor(raw):
    assert normalize_vendor(raw) is None


def test_protocol_keeps_raw_manufacturer():
    protocol = Protocol(manufacturer=" GE MEDICAL SYSTEMS ")
    assert protocol.manufacturer == "GE MEDICAL SYSTEMS"
    assert protocol.vendor == "GE"


def test_vendor_with_separator_rejected():
    with pytest.raises(PromptError, match="Manufacturer"):
        build_prompt("T1w", Protocol(manufacturer="Acme; Inc"))


# ------------------------------------------------------------------------------ sex


@pytest.mark.parametrize(
    ("raw", "sex"),
    [
        ("M", "M"),
        ("m", "M"),
        ("male", "M"),
        ("Male", "M"),
        ("MALE", "M"),
        (" M ", "M"),
        ("F", "F"),
        ("f", "F"),
        ("female", "F"),
        ("Female", "F"),
        ("FEMALE", "F"),
        ("n/a", None),
        ("O", None),
        ("other", None),
        ("", None),
        (None, None),
        (1, None),
    ],
)
def test_sex_spellings(raw, sex):
    assert normalize_sex(raw) == sex
    assert Demographics(sex=raw).sex == sex


# ------------------------------------------------------------------------------ age


@pytest.mark.parametrize(
    ("raw", "age"),
    [
        (16, 16.0),
        ("16", 16.0),
        (" 16.5 ", 16.5),
        ("89+", 89.0),
        ("n/a", None),
        ("", None),
        ("unknown", None),
        (None, None),
        (float("nan"), None),
        ("inf", None),
        (True, None),
    ],
)
def test_parse_age(raw, age):
    assert parse_age(raw) == age


@pytest.mark.parametrize(
    ("age", "text"),
    [
        (16, "16"),
        (16.0, "16"),
        (16.5, "16.5"),
        (16.25, "16.2"),  # one decimal (round() on the binary value)
        (16.04, "16"),
        (0.3, "0.3"),
        (84, "84"),
        (None, "None"),
    ],
)
def test_format_age(age, text):
    assert format_age(age) == text


def test_age_validation():
    with pytest.raises(PromptError, match="Age"):
        build_prompt("T1w", Protocol(), Demographics(age=-1))
    with pytest.raises(PromptError, match="Age"):
        build_prompt("T1w", Protocol(), Demographics(age=400))


# ------------------------------------------------------------------------------ voxel size


@pytest.mark.parametrize(
    ("zooms", "text"),
    [
        ((0.800000011920929,) * 3, "(0.8, 0.8, 0.8)"),
        ((float(np.float32(0.79999995)),) * 3, "(0.8, 0.8, 0.8)"),
        ((float(np.float32(0.7)), 0.7, 0.7), "(0.7, 0.7, 0.7)"),
        ((1.25, 1.25, 1.25), "(1.25, 1.25, 1.25)"),
        ((0.9375, 0.9375, 1.2000000476837158), "(0.9375, 0.9375, 1.2)"),
        ((0.9765625, 0.9765625, 3.0), "(0.9765625, 0.9765625, 3.0)"),
        ((1, 1, 3), "(1.0, 1.0, 3.0)"),
        (None, "(None, None, None)"),
    ],
)
def test_voxel_size_rounding(zooms, text):
    assert format_voxel_size(zooms) == text


def test_voxel_size_from_numpy_zooms():
    zooms = np.array([0.8, 0.8, 0.8], dtype=np.float32)
    assert "Voxel size: (0.8, 0.8, 0.8);" in build_prompt("T1w", Protocol(), None, tuple(zooms))


def test_voxel_size_argument_overrides_protocol():
    protocol = Protocol(voxel_size=(1, 1, 1))
    assert "(1.0, 1.0, 1.0)" in build_prompt("T1w", protocol)
    assert "(0.5, 0.5, 0.5)" in build_prompt("T1w", protocol, None, (0.5, 0.5, 0.5))


def test_voxel_size_validation():
    with pytest.raises(PromptError, match="three"):
        build_prompt("T1w", Protocol(), None, (1.0, 1.0))
    with pytest.raises(PromptError, match="positive"):
        build_prompt("T1w", Protocol(), None, (1.0, 0.0, 1.0))
    with pytest.raises(PromptError, match="negative"):
        build_prompt("T1w", Protocol(), None, (1.0, -1.0, 1.0))


# ------------------------------------------------------------------------------ missing


def test_missing_everything_renders_none():
    prompt = build_prompt("T1w", protocol_from_sidecar({}), Demographics(), None)
    assert prompt == (
        "Age: None; Gender: None; Scanner: None None; Modality: T1w; "
        "Voxel size: (None, None, None); "
        "Imaging parameter TR(ms), TE(ms), TI(ms), and FA(degree):  (None, None, None, None)"
    )
    assert build_prompt("T1w", Protocol()) == prompt


def test_sidecar_without_timing_fields():
    # e.g. hcp_example_bids: only EffectiveEchoSpacing and PhaseEncodingDirection
    protocol = protocol_from_sidecar(
        {"EffectiveEchoSpacing": 7.4e-06, "PhaseEncodingDirection": "k"}
    )
    assert protocol == Protocol()


# ------------------------------------------------------------------------------ modality


@pytest.mark.parametrize("modality", ["", " ", "T1w; T2w", "T1w\nT2w", "T1(w)", "T1w:"])
def test_bad_modality_words(modality):
    with pytest.raises(PromptError):
        build_prompt(modality, Protocol())


def test_modality_is_stripped():
    assert "Modality: FLAIR;" in build_prompt(" FLAIR ", Protocol())


# ------------------------------------------------------------------------------ target prompts


def test_target_prompt_uses_subject_demographics_and_output_grid():
    prompt = target_prompt(
        "T2w",
        protocol_from_sidecar(HCPD_T2W),
        Demographics(age=16, sex="F"),
        (0.8, 0.8, 0.8),
    )
    assert prompt == PUBLISHED_T2W_16F


def test_target_prompt_inherits_scanner_from_source_only_when_missing():
    source = protocol_from_sidecar(dict(HCPD_T1W, Manufacturer="GE MEDICAL SYSTEMS"))
    target = Protocol(repetition_time=9.0, echo_time=0.081, inversion_time=2.5, flip_angle=150)
    prompt = target_prompt(
        "FLAIR", target, Demographics(45, "M"), (1, 1, 3), source_protocol=source
    )
    assert prompt == (
        "Age: 45; Gender: M; Scanner: 3.0 GE; Modality: FLAIR; Voxel size: (1.0, 1.0, 3.0); "
        + PARAMS
        + "(9000.0, 81.0, 2500.0, 150.0)"
    )
    # the target's own scanner wins; timing is never inherited
    target = Protocol(magnetic_field_strength=1.5, manufacturer="Philips")
    prompt = target_prompt("T2w", target, None, (1, 1, 1), source_protocol=source)
    assert "Scanner: 1.5 Philips;" in prompt
    assert prompt.endswith("(None, None, None, None)")


# ------------------------------------------------------------------------------ validator


@pytest.mark.parametrize(
    "text",
    [
        PUBLISHED_T1W_16F.replace("):  (", "): ("),  # one space after FA(degree):
        PUBLISHED_T1W_16F.replace("Gender: F", "Gender: female"),
        PUBLISHED_T1W_16F.replace("(0.8, 0.8, 0.8)", "(0.8, 0.8)"),
        PUBLISHED_T1W_16F + "\n",
        " " + PUBLISHED_T1W_16F,
        "Age: 16",
    ],
)
def test_validate_prompt_rejects_non_template_text(text):
    with pytest.raises(PromptError, match="not a TUMSyn prompt"):
        validate_prompt(text)


def test_prompt_error_is_value_error():
    assert issubclass(PromptError, ValueError)


def test_dataclasses_are_frozen_and_comparable():
    assert Demographics("89+", "female") == Demographics(89, "F")
    with pytest.raises(AttributeError):
        Demographics().age = 3  # type: ignore[misc]
    assert protocol_from_sidecar(HCPD_T1W) == Protocol(2.5, 0.0022, 1.0, 8.0, 3.0, "Siemens")


@pytest.mark.parametrize(
    "extra,expected",
    [
        ({"MRAcquisitionType": "3D", "SequenceName": "*spc_314ns"}, "T2var"),  # Siemens SPACE
        ({"MRAcquisitionType": "3D", "PulseSequenceDetails": "%SiemensSeq%_tse_vfl"}, "T2var"),
        ({"MRAcquisitionType": "3D", "PulseSequenceType": "CUBE"}, "T2var"),
        ({"MRAcquisitionType": "2D", "SequenceName": "*tse2d1_15"}, 120.0),  # 2-D TSE: a number
        ({"MRAcquisitionType": "3D", "SequenceName": "*tfl3d1_16ns"}, 120.0),  # MPRAGE-like
        ({"SequenceName": "*spc_314ns"}, 120.0),  # acquisition type unknown: keep the number
    ],
)
def test_variable_flip_angle_tse_is_written_t2var(extra, expected):
    protocol = protocol_from_sidecar({"RepetitionTime": 3.2, "FlipAngle": 120, **extra})
    assert protocol.flip_angle == expected
    assert build_prompt("T2w", protocol).endswith(f"(3200.0, None, None, {expected})")
