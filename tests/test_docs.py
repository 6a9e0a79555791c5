"""The documentation stands on its own: every page a file cites exists in the repository, with the section cited."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = ("algorithms", "evaluation", "architecture")  # the reference pages in docs/, cited by section
CITATION = re.compile(r"(?<![\w/.-])((?:\.{1,2}/|[\w-]+/)*(?:" + "|".join(PAGES) + r")\.md)"
                      r"(?:\S*\s+§\s*(\d+(?:\.\d+)?))?")
TEXT_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".toml", ".txt", ".cfg", ".ini"}


def repository_files() -> list[Path]:
    """Tracked and new (not ignored) files: what a contributor's clone holds."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.split()
    return [ROOT / name for name in listed
            if (Path(name).suffix in TEXT_SUFFIXES or Path(name).name == "Makefile") and (ROOT / name).is_file()]


def section_numbers(page: Path) -> set[str]:
    return {m.group(1) for m in re.finditer(r"^#{1,4} (\d+(?:\.\d+)?)\b", page.read_text(), re.M)}


def broken_citations() -> list[str]:
    """`file:line: citation` for every citation whose page is missing or has no such section."""
    broken = []
    for path in repository_files():
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            for match in CITATION.finditer(line):
                cited, section = match.group(1), match.group(2)
                target = next((base / cited for base in (path.parent, ROOT) if (base / cited).is_file()), None)
                if target is None or (section and section not in section_numbers(target)):
                    broken.append(f"{path.relative_to(ROOT)}:{number}: {match.group(0)}")
    return broken


def test_the_reference_pages_have_numbered_sections():
    for page in PAGES:
        assert {"1", "2", "3"} <= section_numbers(ROOT / "docs" / f"{page}.md"), page


def test_docs_and_readme_cite_pages_that_exist():
    broken = [b for b in broken_citations() if b.startswith(("docs/", "README.md"))]
    assert not broken, "\n".join(broken)


def test_every_citation_of_a_reference_page_resolves_in_the_repository():
    broken = broken_citations()
    assert not broken, "\n".join(broken)
