"""Template files through the TemplateFlow client, offline.

This is the only module that imports :mod:`templateflow`, and :func:`get_template` is the only
way the rest of the package finds a template file: one call to ``templateflow.api.get``.

Before the client is imported, ``TEMPLATEFLOW_AUTOUPDATE`` is set to ``0``. Nothing here may
reach the network: the client downloads a file only when the query matches a zero-byte
placeholder of its skeleton (``_s3_get``), so :func:`get_template` first lists the matches
(``templateflow.api.ls``, no download) and raises :class:`TemplateNotFoundError` when the query
matches nothing, more than one file, or a placeholder.

``TEMPLATEFLOW_HOME`` is read once, when the client is first imported (the client's own rule);
its default is the client's (``platformdirs.user_cache_dir("templateflow")``).
"""

from __future__ import annotations

import os
from pathlib import Path

#: The template of ``--output-spaces`` when none is named; ``tumsyn-templates init`` writes it.
DEFAULT_TEMPLATE = "MNI152NLin2009aSym"

#: The command that populates a TemplateFlow home offline (named in every error).
INIT_COMMAND = "tumsyn-templates init"


class TemplateNotFoundError(LookupError):
    """A template file is not available offline in ``TEMPLATEFLOW_HOME``.

    The message is one line: the template and query, the home, and the fix.
    """


def templateflow_home() -> Path:
    """The TemplateFlow home the client uses (or will use): ``$TEMPLATEFLOW_HOME``, else the
    client's default cache folder. Absolute; it need not exist."""
    home = os.environ.get("TEMPLATEFLOW_HOME")
    if not home:
        from platformdirs import user_cache_dir  # the client's own default (templateflow.conf)

        home = user_cache_dir("templateflow")
    return Path(home).absolute()


def _client():
    """``templateflow.api``, imported with auto-update off, for a home that holds something.

    Raises :class:`TemplateNotFoundError` when the home is missing or empty: the client would
    otherwise write its skeleton there (and fail on a read-only home).
    """
    os.environ["TEMPLATEFLOW_AUTOUPDATE"] = "0"
    home = templateflow_home()
    if not home.is_dir() or not any(home.iterdir()):
        raise TemplateNotFoundError(
            f"TEMPLATEFLOW_HOME={home} is missing or empty; "
            f"populate it offline with `{INIT_COMMAND} {home}`"
        )
    from templateflow import api, conf

    imported_home = Path(conf.TF_HOME).absolute()
    if imported_home != home:
        # The client fixed its home at its first import; a later change would be ignored.
        raise TemplateNotFoundError(
            f"TEMPLATEFLOW_HOME changed to {home} after the TemplateFlow client was loaded "
            f"with {imported_home}; set it before the run starts"
        )
    return api


def _query_text(template: str, query: dict) -> str:
    parts = [f"{k}={v}" for k, v in query.items() if v is not None]
    return f"{template} ({', '.join(parts)})" if parts else template


def get_template(
    template: str,
    resolution: int | None,
    suffix: str,
    *,
    desc: str | None = None,
    label: str | None = None,
    extension: str = ".nii.gz",
) -> Path:
    """One template file, found by ``templateflow.api.get`` in ``TEMPLATEFLOW_HOME``.

    Parameters
    ----------
    template
        TemplateFlow identifier, e.g. ``"MNI152NLin2009aSym"``.
    resolution
        TemplateFlow's ``res-`` index (1 matches ``res-1`` and ``res-01``), or None for files
        without a resolution.
    suffix, desc, label, extension
        The file's BIDS suffix and entities; ``None`` means "the entity is absent" (so
        ``desc=None`` selects ``..._T1w`` and not ``..._desc-brain_T1w``).

    Returns
    -------
    Path
        Absolute path of the existing, non-empty file.

    Raises
    ------
    TemplateNotFoundError
        Nothing matches, several files match, or the match is a zero-byte placeholder of the
        TemplateFlow skeleton (which the client would try to download). The one-line message
        names the template, ``TEMPLATEFLOW_HOME`` and the fix, ``tumsyn-templates init``.
    """
    query = {
        "resolution": resolution,
        "suffix": suffix,
        "desc": desc,
        "label": label,
        "extension": extension,
    }
    api = _client()
    home = templateflow_home()
    what = _query_text(template, query)
    listed = api.ls(template, **query)
    if not listed:
        raise TemplateNotFoundError(
            f"template {what} is not in TEMPLATEFLOW_HOME={home}; for {DEFAULT_TEMPLATE} run "
            f"`{INIT_COMMAND} {home}`, for other templates use a TemplateFlow home that has them"
        )
    if len(listed) > 1:
        names = ", ".join(p.name for p in listed)
        raise TemplateNotFoundError(f"template query {what} is ambiguous in {home}: {names}")
    if listed[0].stat().st_size == 0:
        raise TemplateNotFoundError(
            f"template {what} is only a TemplateFlow placeholder (0 bytes) in "
            f"TEMPLATEFLOW_HOME={home} and nothing is downloaded at run time; for "
            f"{DEFAULT_TEMPLATE} run `{INIT_COMMAND} {home}`, for other templates fetch them "
            "into the home beforehand"
        )
    found = api.get(template, **query)
    return Path(found).absolute()


def list_templates() -> list[str]:
    """Identifiers of the templates with at least one non-empty NIfTI file in the home (via
    ``templateflow.api.ls``), sorted; empty when the home is missing or empty."""
    try:
        api = _client()
    except TemplateNotFoundError:
        return []
    names = []
    for name in api.templates():
        files = api.ls(name, extension=".nii.gz")
        if any(p.stat().st_size > 0 for p in files):
            names.append(name)
    return sorted(names)


def template_metadata(template: str) -> dict:
    """The template's ``template_description.json`` (``templateflow.api.get_metadata``): name,
    authors, references, license, and per resolution the grid's ``shape``, ``origin`` (mm) and
    ``zooms`` (mm). Raises :class:`TemplateNotFoundError` when the template is not in the home.
    """
    api = _client()
    if template not in api.templates():
        home = templateflow_home()
        raise TemplateNotFoundError(
            f"template {template} is not in TEMPLATEFLOW_HOME={home}; for {DEFAULT_TEMPLATE} "
            f"run `{INIT_COMMAND} {home}`"
        )
    return api.get_metadata(template)
