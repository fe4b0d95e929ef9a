"""Demographics from a BIDS dataset's ``participants.tsv`` and ``sessions.tsv`` files.

The prompt needs each scan's age and sex. BIDS keeps them in tabular files whose presence and
columns vary between datasets, so this module reads them leniently and answers "unknown" (None)
instead of failing: no ``participants.tsv``, no such column, no row for the subject, or an
``n/a`` cell all give None. How a *value* is spelled in the prompt (``M``/``F``, ``89+``, one
decimal) is decided in :mod:`tumsyn_bids.prompts`; this module only finds the cell and its unit.

Column choice (case-insensitive):

* **age**: ``age`` if present, otherwise the first column whose name starts with ``age_``
  (e.g. ``age_at_first_scan_years`` in 7t_trt, an approximation for later sessions).
* **sex**: ``sex``, otherwise ``gender``.

Which row (one visit never gets another visit's age):

* A per-session age in ``sub-<label>/sub-<label>_sessions.tsv`` (the row whose ``session_id``
  is the scan's session) takes precedence, since age changes between sessions of a
  longitudinal study. An ``n/a`` there falls back to ``participants.tsv``.
* ``participants.tsv`` with one row per participant gives the participant's age and sex.
* **Long format**: a ``participants.tsv`` with a ``session_id`` column has one row per
  participant *and* visit; the age is read from the row of the scan's session only. No such
  row gives None; the sex, a property of the participant, may come from the participant's other
  rows when they agree.
* **Ambiguity**: several rows for the same participant (and visit) that disagree give None and
  a warning, never one of them.

Units: BIDS recommends ages in years. A column's ``Units`` in the TSV's JSON sidecar is applied
(``year``, ``month``, ``week``, ``day`` and their plurals/abbreviations); without it, a column
name ending in ``_months``/``_weeks``/``_days`` implies that unit. The sidecar is found by the
BIDS inheritance principle, resolved by PyBIDS as for image sidecars: a dataset-level
``sessions.json`` applies to every ``sub-<label>/sub-<label>_sessions.tsv``, and a
``sub-<label>/sub-<label>_sessions.json`` overrides it key by key (``participants.json`` sits
next to its table). A declared unit this module does not know makes the age None rather than a
wrong number.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from tumsyn_bids.prompts.protocol import Demographics
from tumsyn_bids.prompts.values import normalize_sex, parse_age

__all__ = ["ParticipantTable", "age_in_years", "find_age_column", "find_sex_column"]

LOGGER = logging.getLogger(__name__)

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


def _strip_prefix(label: str, prefix: str) -> str:
    label = str(label).strip()
    return label[len(prefix) :] if label.startswith(prefix) else label


def _label_or_none(cell: Any, prefix: str) -> str | None:
    text = _strip_prefix(cell, prefix)
    return None if text.lower() in ("", "n/a") else text


def _years(age: float) -> str:
    return f"{age:g}"


@dataclass(frozen=True)
class _Row:
    """One TSV row: its label (participant or session), visit (long format), age, sex."""

    label: str
    session: str | None
    age: float | None
    sex: str | None


@dataclass
class _Table:
    """One TSV reduced to rows of (label, session, age in years, normalised sex).

    Rows are converted when a label is first asked for: a task of a cluster array reads the
    row of one participant, not the whole participants.tsv of a large dataset.
    """

    name: str = ""
    #: True for a participants.tsv with a ``session_id`` column (one row per visit).
    long: bool = False
    frame: pd.DataFrame | None = None
    labels: pd.Series | None = None
    id_column: str = ""
    age_column: str | None = None
    sex_column: str | None = None
    sidecar: Mapping[str, Any] = field(default_factory=dict)
    _rows: dict[str, list[_Row]] = field(default_factory=dict)

    @classmethod
    def load(
        cls, tsv: Path, name: str, id_column: str, prefix: str, sidecar: Mapping[str, Any]
    ) -> _Table:
        frame = _read_tsv(tsv)
        if frame is None or id_column not in frame.columns:
            return cls(name=name)
        columns = list(frame.columns)
        labels = frame[id_column].str.strip()
        return cls(
            name=name,
            long=id_column == "participant_id" and "session_id" in columns,
            frame=frame,
            labels=labels.where(~labels.str.startswith(prefix), labels.str[len(prefix) :]),
            id_column=id_column,
            age_column=find_age_column(columns),
            sex_column=find_sex_column(columns),
            sidecar=sidecar,
        )

    def _row(self, label: str, row: pd.Series) -> _Row:
        age, sex = self.age_column, self.sex_column
        return _Row(
            label=label,
            session=_label_or_none(row["session_id"], "ses-") if self.long else None,
            age=age_in_years(row[age], age, self.sidecar) if age else None,
            sex=normalize_sex(row[sex]) if sex else None,
        )

    def rows_for(self, label: str) -> list[_Row]:
        if self.frame is None:
            return []
        if label not in self._rows:
            matches = self.frame[(self.labels == label).to_numpy()]
            self._rows[label] = [self._row(label, row) for _, row in matches.iterrows()]
        return self._rows[label]


def _agreed(values: list[Any], what: str, where: str, warnings: list[str]) -> Any:
    """The one value that ``values`` (None = unknown) agree on; None and a warning otherwise."""
    known = sorted({v for v in values if v is not None}, key=str)
    if len(known) <= 1:
        return known[0] if known else None
    shown = ", ".join(_years(v) if isinstance(v, float) else str(v) for v in known)
    warnings.append(f"{where} disagree on the {what} ({shown}); {what} unknown (None)")
    return None


class ParticipantTable:
    """Demographics lookup for one dataset; each TSV is read once, on first use.

    ``lookup(subject, session)`` returns a :class:`~tumsyn_bids.prompts.protocol.Demographics` for a
    subject label (with or without ``sub-``) and an optional session label, and logs a warning
    when the tables are ambiguous; :meth:`lookup_with_warnings` returns those warnings instead.
    ``layout`` (a PyBIDS layout of ``root``) resolves the tables' JSON sidecars; without it one
    is built on first need.
    """

    def __init__(self, root: str | os.PathLike[str], layout: Any | None = None) -> None:
        self.root = Path(root)
        self._layout = layout
        self._participants: _Table | None = None
        self._sessions: dict[str, _Table] = {}
        self._logged: set[str] = set()

    def _sidecar(self, tsv: Path) -> dict[str, Any]:
        """The TSV's JSON sidecar after BIDS inheritance (PyBIDS); {} when there is none."""
        if self._layout is None:
            from tumsyn_bids.bids.pybids import pybids_layout

            try:
                self._layout = pybids_layout(self.root)
            except (ValueError, OSError) as exc:
                LOGGER.warning("cannot read the sidecars of %s's tables: %s", self.root, exc)
                self._layout = False
        if not self._layout:
            return {}
        bids_file = self._layout.get_file(str(tsv))
        return dict(bids_file.get_metadata()) if bids_file is not None else {}

    def _load(self, tsv: Path, id_column: str, prefix: str) -> _Table:
        name = tsv.relative_to(self.root).as_posix()
        if not tsv.is_file():
            return _Table(name=name)
        return _Table.load(tsv, name, id_column, prefix, self._sidecar(tsv))

    def _participant_table(self) -> _Table:
        if self._participants is None:
            tsv = self.root / "participants.tsv"
            self._participants = self._load(tsv, "participant_id", "sub-")
        return self._participants

    def _session_table(self, subject: str) -> _Table:
        if subject not in self._sessions:
            tsv = self.root / f"sub-{subject}" / f"sub-{subject}_sessions.tsv"
            self._sessions[subject] = self._load(tsv, "session_id", "ses-")
        return self._sessions[subject]

    def lookup(self, subject: str, session: str | None = None) -> Demographics:
        """Age and sex of ``subject`` at ``session`` (module docstring); warnings are logged."""
        demographics, warnings = self.lookup_with_warnings(subject, session)
        for warning in warnings:
            if warning not in self._logged:
                self._logged.add(warning)
                LOGGER.warning("%s", warning)
        return demographics

    def lookup_with_warnings(
        self, subject: str, session: str | None = None
    ) -> tuple[Demographics, list[str]]:
        """:meth:`lookup`, returning the ambiguity warnings (one line each) instead of logging."""
        subject = _strip_prefix(subject, "sub-")
        session = None if session is None else _strip_prefix(session, "ses-")
        visit = f"sub-{subject}" + (f" ses-{session}" if session is not None else "")
        warnings: list[str] = []

        age = None
        if session is not None:
            table = self._session_table(subject)
            rows = table.rows_for(session)
            where = f"{table.name}: the {len(rows)} rows of ses-{session}"
            age = _agreed([r.age for r in rows], "age", where, warnings)
        # An ambiguous visit age stays unknown: no fallback to the participant's age.
        look_further = age is None and not warnings

        participants = self._participant_table()
        rows = participants.rows_for(subject)
        if not participants.long:
            where = f"{participants.name}: the {len(rows)} rows of sub-{subject}"
            if look_further:
                age = _agreed([r.age for r in rows], "age", where, warnings)
            sex = _agreed([r.sex for r in rows], "sex", where, warnings)
            return Demographics(age=age, sex=sex), warnings

        visit_rows = [r for r in rows if r.session == session]
        if session is None and not visit_rows and len(rows) == 1:
            visit_rows = rows  # a dataset without sessions: the participant's only row
        if look_further and visit_rows:
            where = f"{participants.name}: the {len(visit_rows)} rows of {visit}"
            age = _agreed([r.age for r in visit_rows], "age", where, warnings)
        elif look_further and rows:
            others = ", ".join(sorted({f"ses-{r.session}" for r in rows if r.session}))
            warnings.append(
                f"{participants.name} has rows for sub-{subject} ({others or 'no session'}) "
                f"but none for {visit}; age unknown (None), not another visit's"
            )
        sex = _agreed([r.sex for r in visit_rows], "sex", "", [])
        if sex is None:
            where = f"{participants.name}: the {len(rows)} rows of sub-{subject}"
            sex = _agreed([r.sex for r in rows], "sex", where, warnings)
        return Demographics(age=age, sex=sex), warnings
