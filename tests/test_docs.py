"""Documentation points only at files in the repository: every ``docs/<page>.md`` named in the
code, the workflow or a page exists, and every relative link of the README and of docs/ leads
to a file that does."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TEXT_SUFFIXES = {".py", ".md", ".smk", ".yaml", ".rst", ".j2"}


def text_files() -> list[Path]:
    skip = {".venv", ".git", "results", ".snakemake", "node_modules"}
    files = [REPO / "Snakefile"]
    for path in REPO.rglob("*"):
        if path.suffix in TEXT_SUFFIXES and path.is_file() and not skip & set(path.relative_to(REPO).parts):
            files.append(path)
    return files


def test_every_docs_page_named_exists():
    missing = []
    for path in text_files():
        for page in re.findall(r"\bdocs/[\w.-]+\.md\b", path.read_text(errors="replace")):
            if not (REPO / page).is_file():
                missing.append(f"{path.relative_to(REPO)}: {page}")
    assert not missing


def test_relative_links_of_the_readme_and_docs_resolve():
    broken = []
    for page in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+)", page.read_text()):
            if "://" not in target and not (page.parent / target).exists():
                broken.append(f"{page.relative_to(REPO)}: {target}")
    assert not broken
