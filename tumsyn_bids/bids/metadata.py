"""Demographics from a BIDS dataset's ``participants.tsv`` and ``sessions.tsv`` files.

The prompt needs each scan's age and sex. BIDS keeps them in tabular files whose presence and
columns vary between datasets, so this module reads them leniently and answers "unknown" (None)
instead of failing: no ``participants.tsv``, no such column, no row for the subject, or an
``n/a`` cell all give None. How a *value* is spelled in the prompt (``M``/``F``, ``89+``, one
decimal) is decided in :mod:`tumsyn_bids.prompts`; this module only finds the cell and its unit.

Column choice (case-insensitive):

* **age**: ``age`` if present, otherwise the first column whose name starts with ``age_``
  (e.g. ``age_at_first_scan_years`` in 7t_trt, an approximation for later sessions). A
  per-session age in ``sub-<label>/sub-<label>_sessions.tsv`` takes precedence over the
  participant's, since age changes between sessions of a longitudinal study.
* **sex**: ``sex``, otherwise ``gender``.

Units: BIDS recommends ages in years. If ``participants.json`` (or ``sessions.json``) gives the
column's ``Units``, or the column name ends in ``_months``/``_weeks``/``_days``, the value is
converted to years; a declared unit this module does not know makes the age None rather than
a wrong number.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from tumsyn_bids.prompts import Demographics, parse_age

__all__ = ["ParticipantTable", "age_in_years", "find_age_column", "find_sex_column"]

_YEARS_PER_UNIT = {
    "year": 1.0,
    "years": 1.0,
    "yr": 1.0,
    "yrs": 1.0,
    "y": 1.0,
    "a": 1.0,
    "month": 1 / 12,
    "months": 1 / 12,
    "mo": 1 / 12,
    "week": 7 / 365.25,
    "weeks": 7 / 365.25,
    "wk": 7 / 365.25,
    "day": 1 / 365.25,
    "days": 1 / 365.25,
    "d": 1 / 365.25,
}


def find_age_column(columns: list[str]) -> str | None:
    """The column holding the age: ``age``, else the first ``age_*`` column, else None."""
    lowered = {c.strip().lower(): c for c in columns}
    if "age" in lowered:
        return lowered["age"]
    for column in columns:
        if column.strip().lower().startswith("age_"):
            return column
    return None


def find_sex_column(columns: list[str]) -> str | None:
    """The column holding the sex: ``sex``, else ``gender``, else None."""
    lowered = {c.strip().lower(): c for c in columns}
    return lowered.get("sex", lowered.get("gender"))


def _unit_factor(column: str, sidecar: Mapping[str, Any]) -> float | None:
    """Years per unit of ``column``; None if the declared unit is not understood."""
    description = sidecar.get(column)
    units = description.get("Units") if isinstance(description, Mapping) else None
    if isinstance(units, str) and units.strip():
        return _YEARS_PER_UNIT.get(units.strip().lower().rstrip("."))
    name = column.strip().lower()
    for unit in ("months", "weeks", "days"):
        if name.endswith("_" + unit):
            return _YEARS_PER_UNIT[unit]
    return 1.0


def age_in_years(cell: Any, column: str, sidecar: Mapping[str, Any] | None = None) -> float | None:
    """Read an age cell and convert it to years using the column's declared or implied unit."""
    value = parse_age(cell)
    if value is None:
        return None
    factor = _unit_factor(column, sidecar or {})
    return None if factor is None else value * factor


def _read_tsv(path: Path) -> pd.DataFrame | None:
    """Read a BIDS TSV as strings (``n/a`` stays text for :func:`parse_age`); None if absent."""
    if not path.is_file():
        return None
    try:
        return pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError):
        return None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _strip_prefix(label: str, prefix: str) -> str:
    label = str(label).strip()
    return label[len(prefix) :] if label.startswith(prefix) else label


@dataclass
class _Table:
    """One TSV reduced to ``label -> (age in years, sex cell)``."""

    rows: dict[str, tuple[float | None, Any]] = field(default_factory=dict)

    @classmethod
    def load(cls, tsv: Path, id_column: str, prefix: str) -> _Table:
        frame = _read_tsv(tsv)
        table = cls()
        if frame is None or id_column not in frame.columns:
            return table
        sidecar = _read_json(tsv.with_suffix(".json"))
        columns = list(frame.columns)
        age_column = find_age_column(columns)
        sex_column = find_sex_column(columns)
        for _, row in frame.iterrows():
            label = _strip_prefix(row[id_column], prefix)
            age = age_in_years(row[age_column], age_column, sidecar) if age_column else None
            sex = row[sex_column] if sex_column else None
            table.rows.setdefault(label, (age, sex))
        return table


class ParticipantTable:
    """Demographics lookup for one dataset; each TSV is read once, on first use.

    ``lookup(subject, session)`` returns a :class:`~tumsyn_bids.prompts.Demographics` for a
    subject label (with or without ``sub-``) and an optional session label.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self._participants: _Table | None = None
        self._sessions: dict[str, _Table] = {}

    def _participant_table(self) -> _Table:
        if self._participants is None:
            tsv = self.root / "participants.tsv"
            self._participants = _Table.load(tsv, "participant_id", "sub-")
        return self._participants

    def _session_table(self, subject: str) -> _Table:
        if subject not in self._sessions:
            tsv = self.root / f"sub-{subject}" / f"sub-{subject}_sessions.tsv"
            self._sessions[subject] = _Table.load(tsv, "session_id", "ses-")
        return self._sessions[subject]

    def lookup(self, subject: str, session: str | None = None) -> Demographics:
        """Age and sex of ``subject`` (at ``session`` when sessions.tsv has an age column)."""
        subject = _strip_prefix(subject, "sub-")
        age, sex = self._participant_table().rows.get(subject, (None, None))
        if session is not None:
            session_age, _ = self._session_table(subject).rows.get(
                _strip_prefix(session, "ses-"), (None, None)
            )
            if session_age is not None:
                age = session_age
        return Demographics(age=age, sex=sex)
