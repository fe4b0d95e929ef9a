"""Visual quality control: per-subject HTML reports and the group-level summary.

Everything here reads finished derivatives (images, JSON sidecars, ``sub-XX/log/``) and never
loads the model, so reports can be rebuilt at any time (``--reports-only``) and the group level
runs on whatever participant outputs exist. Pages are self-contained: figures are PNG files
next to them referenced by relative paths, styles are inline, and nothing is fetched from the
network, so a report opens from a file system, an archive or an air-gapped cluster.
"""

from .collect import OutputRecord, collect_subject, list_subjects
from .group import build_group_report
from .html import build_subject_report

__all__ = [
    "OutputRecord",
    "build_group_report",
    "build_subject_report",
    "collect_subject",
    "list_subjects",
]
