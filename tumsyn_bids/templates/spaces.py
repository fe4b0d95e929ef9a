"""Output spaces in the nipreps spelling: ``--output-spaces MNI152NLin2009aSym:res-2 T1w``.

``T1w`` (any name of :data:`SOURCE_SPACES`) is the source image's own grid; any other name is a
TemplateFlow template, optionally with ``:res-<index>`` (TemplateFlow's resolution index; for
``MNI152NLin2009aSym``, 1 = 1 mm, 2 = 2 mm). A template without ``:res-`` means ``res-1``, as the
packaged template has only that. The grids come from
:func:`tumsyn_bids.templates.references.reference_grid`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

#: Names of the source grid (no resampling); ``T1w`` in nipreps' usage.
SOURCE_SPACES = ("T1w",)

_SPEC = re.compile(r"^(?P<name>[A-Za-z0-9]+)(?::res-(?P<res>[0-9]+))?$")


@dataclass(frozen=True)
class OutputSpace:
    """One requested output space: ``name`` and, for templates, the resolution index."""

    name: str
    resolution: int | None = None

    @property
    def is_template(self) -> bool:
        """True for a TemplateFlow template, False for the source grid."""
        return self.name not in SOURCE_SPACES

    @property
    def entities(self) -> dict[str, str]:
        """BIDS entities of a derivative in this space: ``space`` and ``res`` for templates,
        nothing for the source grid (today's file names)."""
        if not self.is_template:
            return {}
        return {"space": self.name, "res": str(self.resolution)}

    def __str__(self) -> str:
        return f"{self.name}:res-{self.resolution}" if self.is_template else self.name


def parse_output_spaces(values: Iterable[str]) -> list[OutputSpace]:
    """``--output-spaces`` values as :class:`OutputSpace` objects, duplicates dropped, in order.

    Raises ValueError (one line, the value and the accepted form) for a malformed value or a
    ``:res-`` on the source space.
    """
    spaces: list[OutputSpace] = []
    for value in values:
        m = _SPEC.match(value.strip())
        if not m:
            raise ValueError(
                f"--output-spaces: cannot read {value!r}; use T1w or a TemplateFlow template "
                "name, optionally with :res-N (e.g. MNI152NLin2009aSym:res-2)"
            )
        name, res = m.group("name"), m.group("res")
        if name in SOURCE_SPACES:
            if res is not None:
                raise ValueError(f"--output-spaces: {value!r}: {name} is the source grid, no :res-")
            space = OutputSpace(name)
        else:
            resolution = int(res) if res is not None else 1
            if resolution < 1:
                raise ValueError(f"--output-spaces: {value!r}: res- must be 1 or more")
            space = OutputSpace(name, resolution)
        if space not in spaces:
            spaces.append(space)
    return spaces


def space_metadata(space: OutputSpace, grid_source: str | None = None) -> dict:
    """Sidecar fields of a derivative resampled into ``space`` (BIDS derivatives):
    ``SpatialReference`` (the template's TemplateFlow repository) and ``Resolution`` (what the
    ``res`` label means; ``grid_source`` is :attr:`Grid.source` when known). Empty for the
    source grid."""
    if not space.is_template:
        return {}
    meta = {
        "SpatialReference": f"https://github.com/templateflow/tpl-{space.name}",
        "Resolution": {
            str(space.resolution): grid_source or f"TemplateFlow res-{space.resolution}"
        },
    }
    return meta
