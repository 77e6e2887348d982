"""Claims from the papers, checked on the runs a benchmark has: claims.csv and its sentences.

A claim is a small YAML entry in claims/ (format: claims/schema.yaml): what it says, the paper's
section and the sentence it tests (quote, or a marked paraphrase; both go into claims.csv), which
methods it compares (by label, by the method names they use, or 'reference'), the statistic,
the direction, what it needs. This module loads the files, runs each claim's test
(analysis/claim_checks.py) and words the verdicts. A claim is supported when every scope it
was tested at is, contradicted when some scope is and none is supported, inconclusive
otherwise; 'not testable here' says what the grid lacks. No method is named here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import jsonschema
import pandas as pd
import yaml

from analysis import catalog
from analysis.claim_checks import (CONTRADICTED, INCONCLUSIVE, NOT_TESTABLE, PER_SIZE_SEEDS, SUPPORTED, TESTS,
                                   VERDICTS, Finding, combine, deep_enough)
from analysis.claim_stats import ACROSS, LR_STATISTICS, Context, NotTestable, label
from stabench.config import SHIPPED_DIR

__all__ = ["SUPPORTED", "CONTRADICTED", "INCONCLUSIVE", "NOT_TESTABLE", "VERDICTS", "ClaimError", "Result",
           "claims_dirs", "claim_files", "load_claims", "check", "verdict_phrase", "sentence", "claims_table"]

CLAIM_COLUMNS = ["claim_id", "claim", "verdict", "summary", "scope", "scope_verdict", "method", "against",
                 "statistic", "unit", "estimate", "ci_low", "ci_high", "confidence", "seeds", "seeds_for_size_verdict",
                 "numbers", "detail", "sentence", "figure", "source", "section", "quote", "paraphrase"]


class ClaimError(ValueError):
    """A claim file is malformed (one line naming the file and the field)."""


@dataclass
class Result:
    """A claim's verdict, the scopes it was tested at, or why it could not be."""
    claim: dict
    verdict: str
    findings: list[Finding] = field(default_factory=list)
    reason: str = ""
    seeds: int = 0  # seeds of the grid it was tested on (a per-size verdict needs PER_SIZE_SEEDS)


SHIPPED_CLAIMS = SHIPPED_DIR / "claims"  # travels with the package (a link to claims/ in a clone)


def claims_dirs() -> list[Path]:
    """Where claim files are looked up, first match of a file name wins (as for methods):
    ``./claims`` of the folder the workflow runs in, then the claims shipped with the package
    (one folder when they are the same, as in a clone)."""
    unique: list[Path] = []
    for d in (Path.cwd() / "claims", SHIPPED_CLAIMS):
        if d.is_dir() and d.resolve() not in [u.resolve() for u in unique]:
            unique.append(d)
    return unique


def claim_files(claims_dirs: Path | str | Sequence[Path | str]) -> list[Path]:
    """The YAML files of the folders (schema.yaml included), a file name's first one only, by name."""
    folders = [Path(claims_dirs)] if isinstance(claims_dirs, (str, Path)) else [Path(d) for d in claims_dirs]
    files: dict[str, Path] = {}
    for folder in folders:
        for path in sorted(folder.glob("*.yaml")):
            files.setdefault(path.name, path)
    return [files[name] for name in sorted(files)]


def load_claims(claims_dirs: Path | str | Sequence[Path | str], ids: tuple[str, ...] | None = None) -> list[dict]:
    """Every claim of the YAML files in the folder, or the folders (a file name's first one
    wins: claim_files), schema.yaml excepted, validated, in file-name order; only ``ids`` if
    given (an unknown id is an error)."""
    files = claim_files(claims_dirs)
    schemas = [path for path in files if path.name == "schema.yaml"]
    if not schemas:
        raise ClaimError(f"no claims/schema.yaml in {claims_dirs}")
    schema = yaml.safe_load(schemas[0].read_text(encoding="utf-8"))
    claims, seen = [], {}
    for path in files:
        if path.name == "schema.yaml":
            continue
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        for claim in data if isinstance(data, list) else [data]:
            err = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(claim))
            if err is not None:
                where = ".".join(map(str, err.absolute_path)) or "(top level)"
                raise ClaimError(f"{path}: {where}: {err.message}")
            if claim["id"] in seen:
                raise ClaimError(f"{path}: id {claim['id']!r} is already used in {seen[claim['id']]}")
            if claim["figure"] not in catalog.FIGURES:
                raise ClaimError(f"{path}: figure {claim['figure']!r} is not one of {', '.join(catalog.FIGURES)}")
            seen[claim["id"]] = path.name
            claims.append(claim)
    if ids is not None:
        unknown = [i for i in ids if i not in seen]
        if unknown:
            raise ClaimError(f"analysis.claims: unknown claim id(s) {', '.join(unknown)}; known: {', '.join(seen)}")
        claims = [c for c in claims if c["id"] in ids]
    return claims


def check(claim: dict, ctx: Context) -> Result:
    """One claim's verdict on the runs of ctx."""
    if ctx.runs.empty:
        return Result(claim, NOT_TESTABLE, reason="needs runs")
    seeds = len(ctx.grid.seeds)
    try:
        tested, dropped = deep_enough(claim, ctx)
        findings = TESTS[claim["test"]](claim, tested)
    except NotTestable as exc:
        return Result(claim, NOT_TESTABLE, reason=str(exc), seeds=seeds)
    if dropped:
        note = (f"; sizes of fewer than {claim['needs']['layers']} layers left out ({', '.join(dropped)}): "
                "the method cannot act there")
        for f in findings:
            f.detail += note
    if claim.get("statistic") in LR_STATISTICS:
        rescaling = set(tested.runs.loc[tested.runs["changes_lr_meaning"].astype(bool), "method"]) \
            if "changes_lr_meaning" in tested.runs else set()
        for f in findings:
            flagged = [m for m in (f.method, f.against) if m in rescaling]
            if flagged:
                f.detail += (f"; {' and '.join(flagged)} {'changes' if len(flagged) == 1 else 'change'} what the peak "
                             "LR means (a different step size at the same LR), so this compares the two on the raw LR grid")
    return Result(claim, combine([f.verdict for f in findings]), findings, seeds=seeds)


def _where(scopes: list[str]) -> str:
    """'at s1, s2 and s3', 'across sizes', 'over all runs'."""
    sizes = [s for s in scopes if s not in (ACROSS, "all runs")]
    words = [s if s == ACROSS else "over all runs" for s in scopes if s in (ACROSS, "all runs")]
    if sizes:
        words.insert(0, "at " + (sizes[0] if len(sizes) == 1 else ", ".join(sizes[:-1]) + " and " + sizes[-1]))
    return ", ".join(dict.fromkeys(words))


def verdict_phrase(result: Result) -> str:
    """Where the claim holds, fails or stays open: 'supported at s1 and s2, inconclusive at s3'."""
    if result.verdict == NOT_TESTABLE:
        return f"not testable here: {result.reason}"
    pairs = {(f.method, f.against) for f in result.findings}
    parts = []
    for v in (SUPPORTED, CONTRADICTED, INCONCLUSIVE):
        group = [f for f in result.findings if f.verdict == v]
        if not group:
            continue
        if len(pairs) > 1:
            parts.append(f"{v} for " + ", ".join(f"{f.method} vs {f.against} {_where([f.scope])}".replace(" vs  ", " ")
                                                  for f in group))
        else:
            parts.append(f"{v} {_where([f.scope for f in group])}")
    return ", ".join(parts)


def sentence(result: Result) -> str:
    """The claim and its verdict in plain words, one sentence per claim, then the numbers."""
    claim = result.claim["claim"].strip().rstrip(".")
    numbers = "; ".join(f.numbers for f in result.findings if f.numbers)
    return f"{claim}: {verdict_phrase(result)}" + (f" ({numbers})." if numbers else ".")


def claims_table(results: list[Result], confidence: float) -> pd.DataFrame:
    """claims.csv: a row per tested scope of each claim (one row for a claim not tested)."""
    rows = []
    for res in results:
        c = res.claim
        base = {"claim_id": c["id"], "claim": c["claim"].strip(), "verdict": res.verdict,
                "statistic": c.get("statistic", c["test"]), "unit": label(c.get("statistic", ""), c.get("probe"))[1]
                if c.get("statistic") else "", "confidence": confidence, "sentence": sentence(res),
                "summary": verdict_phrase(res), "seeds": res.seeds, "seeds_for_size_verdict": PER_SIZE_SEEDS,
                "figure": f"figures/{catalog.figure_file(c['figure'])}", "source": c["source"],
                "section": c["section"], "quote": c["quote"], "paraphrase": bool(c.get("paraphrase", False))}
        if not res.findings:
            rows.append({**base, "scope": "", "scope_verdict": res.verdict, "detail": res.reason})
        for f in res.findings:
            rows.append({**base, "scope": f.scope, "scope_verdict": f.verdict, "method": f.method,
                         "against": f.against, "estimate": f.estimate, "ci_low": f.lo, "ci_high": f.hi,
                         "numbers": f.numbers, "detail": f.detail})
    return pd.DataFrame(rows, columns=CLAIM_COLUMNS)
