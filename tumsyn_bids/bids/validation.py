"""Run the official BIDS validator (``bids-validator-deno``) on a dataset, offline.

The BIDS Apps convention (and fMRIPrep) is to refuse input that the reference validator rejects,
so rather than re-implementing the specification we call the validator itself: the PyPI package
``bids-validator-deno`` ships the TypeScript validator as one JavaScript bundle plus a pinned Deno
runtime (the ``deno`` wheel), installs the ``bids-validator-deno`` console script, and needs no
network: the BIDS schema is compiled into the bundle. We run it with ``--format json`` and turn
its issues into one readable line per problem.

Derivative datasets need no flag: the validator applies the derivative rules when
``dataset_description.json`` says ``"DatasetType": "derivative"``. (Its ``--datasetTypes`` option
crashes in 3.0.2 with ``UnknownIssueCodeError: UNSUPPORTED_DATASET_TYPE`` and is not used here.)
Derivatives nested under ``derivatives/`` are only checked with ``recursive=True`` (``-r``).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "DIST_NAME",
    "EXECUTABLE",
    "ValidationResult",
    "ValidatorError",
    "ValidatorNotFound",
    "validate_bids",
    "validator_command",
    "validator_version",
]

#: The PyPI distribution that provides the validator.
DIST_NAME = "bids-validator-deno"
#: The console script it installs.
EXECUTABLE = "bids-validator-deno"
#: Exit status of the validator when the dataset has at least one error.
_EXIT_INVALID = 16
#: How many affected files a message names before summarising the rest as a count.
_MAX_FILES = 3
#: Messages of this form describe the missing field, not the problem; the code says it better.
_FIELD_DESCRIPTION = "Field description:"

#: Environment for the validator. Deno would otherwise colour its error messages (unreadable in
#: logs) and may look for a newer release of itself; neither is wanted on an offline cluster.
_QUIET_ENV = {"NO_COLOR": "1", "DENO_NO_UPDATE_CHECK": "1", "DENO_NO_PROMPT": "1"}


class ValidatorNotFound(RuntimeError):
    """The ``bids-validator-deno`` executable is not installed where we can find it."""


class ValidatorError(RuntimeError):
    """The validator ran but did not produce a report (crash, time-out, unreadable output)."""


@dataclass
class ValidationResult:
    """The outcome of one validator run.

    ``errors`` and ``warnings`` hold one line per issue code (and sub-code, for example the name
    of a missing sidecar field), naming the first affected files; ``raw`` is the validator's JSON
    report, for callers that need more than the summary.
    """

    ok: bool
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return self.ok

    def report(self) -> str:
        """A multi-line text for logs and error messages."""
        lines = [f"BIDS validation {'passed' if self.ok else 'failed'}"]
        lines += [f"  ERROR {line}" for line in self.errors]
        lines += [f"  WARNING {line}" for line in self.warnings]
        return "\n".join(lines)


def validator_command() -> list[str]:
    """The argv prefix that runs the validator.

    Look next to the running interpreter first: a tool installed into a virtual environment
    that is not activated (a container entry point, ``.venv/bin/tumsyn-bids``) has its sibling
    scripts there but not on ``PATH``. Then ``PATH``. Last, if the package is importable but its
    script is missing (an install with ``--no-binary`` scripts, a zipapp), start its entry point
    through this interpreter.
    """
    names = [EXECUTABLE + ".exe", EXECUTABLE] if sys.platform.startswith("win") else [EXECUTABLE]
    # Not resolved: a venv's python is usually a symlink to the base interpreter, whose folder
    # does not hold the venv's scripts.
    bindir = Path(sys.executable).parent
    for name in names:
        candidate = bindir / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return [str(candidate)]
    found = shutil.which(EXECUTABLE)
    if found:
        return [found]
    if importlib.util.find_spec("bids_validator_deno") is not None:
        return [sys.executable, "-c", "import sys; from bids_validator_deno import cli; cli()"]
    raise ValidatorNotFound(
        f"the BIDS validator ({EXECUTABLE}) is not installed: looked in {bindir} and on PATH. "
        f"Install it with `pip install {DIST_NAME}`."
    )


def validator_version() -> str | None:
    """The installed validator's version, from the package metadata.

    Not from ``--version``: the bundle derives that from ``git describe`` in its own folder, so
    inside a virtual environment that lives in a git work tree it prints that repository's
    commit instead of the validator's version.
    """
    try:
        return importlib.metadata.version(DIST_NAME)
    except importlib.metadata.PackageNotFoundError:
        return None


def validate_bids(
    path: str | os.PathLike[str],
    *,
    ignore_warnings: bool = True,
    timeout: float = 300,
    recursive: bool = False,
    extra_args: Sequence[str] = (),
) -> ValidationResult:
    """Validate the BIDS dataset (raw or derivative) at ``path`` with the official validator.

    ``ignore_warnings`` passes ``--ignoreWarnings``, so ``warnings`` stays empty: the validator
    warns about every recommended field a converter did not fill in, which is noise for an app
    that only needs the data to be valid. ``recursive`` also validates the datasets under
    ``derivatives/``; their files are reported relative to the top dataset. ``extra_args`` go to
    the validator as they are (for example ``["--config", "bids-validator.json"]`` to silence
    issue codes, or ``["--ignoreNiftiHeaders"]``).

    Raises :class:`ValidatorNotFound` if the validator is not installed, ``FileNotFoundError``
    if ``path`` is not a folder and :class:`ValidatorError` if the validator fails to report.
    """
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"BIDS dataset folder not found: {root}")
    cmd = [*validator_command(), "--format", "json"]
    if ignore_warnings:
        cmd.append("--ignoreWarnings")
    if recursive:
        cmd.append("--recursive")
    cmd += [*extra_args, str(root.resolve())]
    env = {**os.environ, **_QUIET_ENV}
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, env=env, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise ValidatorError(f"the BIDS validator did not finish within {timeout:g} s") from exc
    except OSError as exc:
        raise ValidatorNotFound(f"cannot run the BIDS validator ({cmd[0]}): {exc}") from exc

    try:
        raw = json.loads(proc.stdout)
    except json.JSONDecodeError:
        raw = None
    if not isinstance(raw, dict) or proc.returncode not in (0, _EXIT_INVALID):
        detail = _tail(proc.stderr) or _tail(proc.stdout) or "no output"
        raise ValidatorError(
            f"the BIDS validator failed (exit status {proc.returncode}) on {root}: {detail}"
        )

    errors, warnings = summarize_issues(raw)
    ok = proc.returncode == 0 and not errors
    if not ok and not errors:
        errors = [f"the validator exited with status {proc.returncode} but listed no error"]
    return ValidationResult(ok=ok, errors=errors, warnings=warnings, raw=raw)


def summarize_issues(raw: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """One line per (severity, code, sub-code) of a validator report: errors, then warnings."""
    groups: dict[tuple[str, str, str], list[Mapping[str, Any]]] = {}
    messages: dict[str, str] = {}
    for prefix, report in _reports(raw):
        issues = report.get("issues") or {}
        messages.update(issues.get("codeMessages") or {})
        for issue in issues.get("issues") or []:
            key = (
                str(issue.get("severity", "error")),
                str(issue.get("code", "UNKNOWN")),
                str(issue.get("subCode") or ""),
            )
            groups.setdefault(key, []).append({**issue, "_prefix": prefix})
    errors: list[str] = []
    warnings: list[str] = []
    for (severity, code, subcode), issues in groups.items():
        line = _format_group(code, subcode, issues, messages.get(code, ""))
        (errors if severity == "error" else warnings).append(line)
    return errors, warnings


def _reports(raw: Mapping[str, Any]) -> Iterable[tuple[str, Mapping[str, Any]]]:
    """The top dataset's report, then each nested derivative's (``--recursive``), with prefixes."""
    yield "", raw
    for prefix, report in (raw.get("derivativesSummary") or {}).items():
        if isinstance(report, Mapping):
            yield str(prefix).rstrip("/"), report


def _format_group(
    code: str, subcode: str, issues: Sequence[Mapping[str, Any]], code_message: str
) -> str:
    name = f"{code} ({subcode})" if subcode else code
    text = _first_line(code_message)
    detail = next(
        (
            _first_line(str(i["issueMessage"]))
            for i in issues
            if i.get("issueMessage") and not str(i["issueMessage"]).startswith(_FIELD_DESCRIPTION)
        ),
        "",
    )
    if detail and len(issues) == 1:
        text = f"{text} {detail}" if text else detail
    files = _affected_files(issues)
    where = ""
    if files:
        shown = ", ".join(files[:_MAX_FILES])
        more = f" and {len(files) - _MAX_FILES} more" if len(files) > _MAX_FILES else ""
        where = f" [{shown}{more}]"
    return f"{name}: {text or 'see the validator report'}{where}"


def _affected_files(issues: Iterable[Mapping[str, Any]]) -> list[str]:
    files: list[str] = []
    for issue in issues:
        prefix = str(issue.get("_prefix", ""))
        locations = [issue["location"]] if issue.get("location") else []
        locations += list(issue.get("affects") or [])
        for loc in locations:
            loc = f"{prefix}{loc}"
            if issue.get("line"):
                loc += f":{issue['line']}"
            if loc not in files:
                files.append(loc)
    # The validator reports files in the order its asynchronous walk meets them; sort so that
    # the same dataset always gives the same message.
    return sorted(files)


def _first_line(text: str) -> str:
    """The message as one line, cut to its first sentence when long.

    The validator's messages are hard-wrapped paragraphs; the first sentence says what is wrong,
    the rest how to fix it, which the code (searchable on the validator's site) also gives.
    """
    line = " ".join(text.split())
    if len(line) > 200:
        cut = line.find(". ")
        line = line[: cut + 1] if 0 < cut < 200 else line[:197] + "..."
    return line


def _tail(text: str, lines: int = 5) -> str:
    return " | ".join(ln.strip() for ln in text.strip().splitlines()[-lines:] if ln.strip())
