"""Standard-space templates: TemplateFlow files found offline, and the packaged default.

- :mod:`.flow` is the only module that imports the TemplateFlow client; everything finds
  template files through :func:`get_template` (``templateflow.api.get``, auto-update off).
- :mod:`.packaged` writes ``MNI152NLin2009aSym`` into a TemplateFlow home from the copy of the
  ICBM 2009a symmetric atlas inside nilearn's wheel (``tumsyn-templates init``).
- :mod:`.references` gives the template brain registration aims at, and the template's voxel
  grid at a resolution (the output grid of ``--output-spaces``).
- :mod:`.spaces` reads ``--output-spaces`` values and gives the derivative's entities and
  sidecar fields.

None of them imports torch. See ``docs/templates.md``.
"""

from .flow import (
    DEFAULT_TEMPLATE,
    TemplateNotFoundError,
    get_template,
    list_templates,
    template_metadata,
    templateflow_home,
)

__all__ = [
    "DEFAULT_TEMPLATE",
    "TemplateNotFoundError",
    "get_template",
    "list_templates",
    "template_metadata",
    "templateflow_home",
]
