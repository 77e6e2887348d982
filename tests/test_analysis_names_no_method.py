"""The analysis and the workflow name no method: methods are named by the claim files (claims/)
and the benchmark's ``reference``, so a renamed or new method never needs an analysis edit."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
METHOD_NAMES = sorted(p.stem for p in (REPO / "methods").glob("*.py") if not p.stem.startswith("_"))
SCANNED = [p for root in ("analysis", "workflow") for p in sorted((REPO / root).rglob("*"))
           if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".pyc", ".png")]


def mentions() -> list[str]:
    """Every whole-word, case-insensitive mention of a shipped method's name, in code, strings,
    docstrings, templates and captions alike."""
    pattern = re.compile(r"(?<![A-Za-z0-9_])(" + "|".join(map(re.escape, METHOD_NAMES)) + r")(?![A-Za-z0-9_])",
                         re.IGNORECASE)
    found = []
    for path in SCANNED:
        for i, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            found += [f"{path.relative_to(REPO)}:{i}: {m.group(0)}" for m in pattern.finditer(line)]
    return found


def test_method_names_and_files_found():
    assert {"baseline", "qk_layernorm", "z_loss"} <= set(METHOD_NAMES)
    names = {p.relative_to(REPO).as_posix() for p in SCANNED}
    assert {"analysis/claims.py", "analysis/templates/report.html.j2", "workflow/rules/analysis.smk",
            "workflow/report/figures/loss_vs_lr.rst"} <= names


def test_analysis_and_workflow_name_no_method():
    assert mentions() == []
