"""The documentation: a short README, every page under docs/ reachable from it, no dead links,
and every command-line option of ``tumsyn`` and ``tumsyn-synth`` documented in docs/usage.md."""

from __future__ import annotations

import configparser
import contextlib
import io
import re
from importlib.metadata import entry_points
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"

# [text](target) links; images and bare URLs are not followed.
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$")
FENCE = re.compile(r"^\s*(```|~~~)")


def prose_lines(path: Path) -> list[str]:
    """The lines of a Markdown file outside fenced code blocks."""
    lines, fenced = [], False
    for line in path.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            lines.append(line)
    return lines


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    return {anchor(m.group(1)) for line in prose_lines(path) if (m := HEADING.match(line))}


def local_links(path: Path) -> list[tuple[Path, str]]:
    """(target file, anchor or '') of every relative link in a Markdown file."""
    found = []
    for line in prose_lines(path):
        for target in LINK.findall(line):
            if re.match(r"[a-z]+:", target):
                continue  # http:, https:, mailto:
            file, _, frag = target.partition("#")
            found.append(((path.parent / file).resolve() if file else path.resolve(), frag))
    return found


def markdown_pages() -> list[Path]:
    return [README, *sorted(DOCS.rglob("*.md"))]


def test_readme_is_short():
    assert len(README.read_text(encoding="utf-8").splitlines()) <= 200


def test_package_long_description_is_the_readme():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    assert cfg["metadata"]["long_description"].strip() == "file: README.md"


@pytest.mark.parametrize("page", markdown_pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_links_resolve(page):
    dead = []
    for target, frag in local_links(page):
        if not target.exists():
            dead.append(f"{target.relative_to(ROOT)} (missing file)")
        elif frag and target.suffix == ".md" and frag not in anchors(target):
            dead.append(f"{target.relative_to(ROOT)}#{frag} (no such heading)")
    assert not dead, f"{page.relative_to(ROOT)}: dead links: {dead}"


def test_every_docs_page_is_reachable_from_the_readme():
    seen, todo = set(), [README.resolve()]
    while todo:
        page = todo.pop()
        if page in seen:
            continue
        seen.add(page)
        todo += [t for t, _ in local_links(page) if t.suffix == ".md" and t.is_file()]
    unreachable = [p.relative_to(ROOT) for p in DOCS.rglob("*.md") if p.resolve() not in seen]
    assert not unreachable, f"not linked from README.md or a page it links to: {unreachable}"


def test_experiment_notes_are_dated():
    notes = sorted((DOCS / "experiments").glob("*.md"))
    assert notes
    for note in notes:
        assert re.fullmatch(r"\d{4}-\d\d-\d\d-[a-z0-9-]+\.md", note.name), note.name
        assert prose_lines(note)[0].startswith(f"# {note.name[:10]}: "), note.name


def help_text(command: str) -> str:
    (script,) = entry_points(group="console_scripts", name=command)
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_:
        script.load()(["--help"])
    assert exit_.value.code == 0
    return out.getvalue()


@pytest.mark.parametrize("command", ["tumsyn", "tumsyn-synth"])
def test_every_option_is_documented(command):
    options = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", help_text(command)))
    assert {"--checkpoint", "--patch-size"} <= options  # the help text was parsed
    usage = (DOCS / "usage.md").read_text(encoding="utf-8")
    # Aliases kept for fMRIPrep users (--participant_label, --n-cpus, --mem) need no entry.
    aliases = {"--participant_label", "--n-cpus", "--mem", "--help"}
    missing = sorted(o for o in options - aliases if f"`{o}" not in usage and f"/{o}" not in usage)
    assert not missing, f"{command} options missing from docs/usage.md: {missing}"
