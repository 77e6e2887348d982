"""Claims from the papers, checked on the runs a benchmark has: claims.csv and its sentences.

A claim is a small YAML entry in claims/ (format: claims/schema.yaml): what it says, which
methods it compares (by label, by the method names they use, or 'reference'), the statistic,
the direction, what it needs. This module names no method: the names live in the claim files.

Verdict of one scope (a size, or across sizes) from the interval of the paired difference
(compare) or of the slope (trend), at the benchmark's confidence:
    lower / decreasing   supported if the interval lies below 0, contradicted if above 0
    higher / increasing  the mirror image
    equivalent           supported if it lies within +-margin, contradicted if it lies outside
anything else is inconclusive. A claim is supported when every scope is, contradicted when
some scope is and none is supported, inconclusive otherwise; 'not testable here' says what the
grid lacks (methods, sizes, seeds, a probe). holdout_prediction and spike_coincidence are
described at their functions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import jsonschema
import numpy as np
import pandas as pd
import yaml

from analysis import catalog
from analysis.bootstrap import percentile_interval
from analysis.claim_stats import ACROSS, Context, NotTestable, label, values
from analysis.predict import holdout_attention
from analysis.probe_families import family_of
from analysis.runs import size_params
from analysis.statistics import slope

SUPPORTED, CONTRADICTED, INCONCLUSIVE, NOT_TESTABLE = "supported", "contradicted", "inconclusive", "not testable here"
VERDICTS = (SUPPORTED, CONTRADICTED, INCONCLUSIVE, NOT_TESTABLE)
DEFAULT_SEEDS = {"compare": 2, "trend": 2, "holdout_prediction": 1, "spike_coincidence": 1}
CLAIM_COLUMNS = ["claim_id", "claim", "verdict", "summary", "scope", "scope_verdict", "method", "against",
                 "statistic", "unit", "estimate", "ci_low", "ci_high", "confidence", "numbers", "detail", "sentence",
                 "figure", "source"]


class ClaimError(ValueError):
    """A claim file is malformed (one line naming the file and the field)."""


@dataclass
class Finding:
    """One tested scope of a claim."""
    scope: str
    verdict: str
    detail: str
    method: str = ""
    against: str = ""
    estimate: float = math.nan
    lo: float = math.nan
    hi: float = math.nan
    numbers: str = ""  # the estimate and interval in a few words, for the report's first screen


@dataclass
class Result:
    claim: dict
    verdict: str
    findings: list[Finding] = field(default_factory=list)
    reason: str = ""


# ------------------------------------------------------------------------- loading

def load_claims(claims_dir: Path | str, ids: tuple[str, ...] | None = None) -> list[dict]:
    """Every claim of the YAML files in claims_dir (schema.yaml excepted), validated, in file
    order; only ``ids`` if given (an unknown id is an error)."""
    folder = Path(claims_dir)
    schema = yaml.safe_load((folder / "schema.yaml").read_text(encoding="utf-8"))
    claims, seen = [], {}
    for path in sorted(folder.glob("*.yaml")):
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


# ------------------------------------------------------------------------- matching

def matches(selector: str, ctx: Context) -> list[str]:
    """Method labels a selector means: 'reference', a label, or the method names a label uses
    (order-insensitive: 'a+b' matches a label built from b and a)."""
    labels = list(ctx.grid.methods)
    if selector == "reference":
        return [ctx.settings.reference] if ctx.settings.reference in labels else []
    if selector in labels:
        return [selector]
    want = sorted(selector.split("+"))
    uses = ctx.runs.drop_duplicates("method").set_index("method")["uses"]
    return [m for m in labels if sorted(str(uses.get(m, m)).split("+")) == want]


def _name(selector: str, ctx: Context) -> str:
    return ctx.settings.reference if selector == "reference" else selector


def needs(claim: dict, ctx: Context) -> None:
    """Raise NotTestable when the grid has too few seeds, sizes or widths for the claim."""
    want = claim.get("needs") or {}
    have = {"seeds": len(ctx.grid.seeds), "sizes": len(ctx.grid.sizes),
            "widths": int(ctx.runs["d_model"].nunique()) if "d_model" in ctx.runs else 0}
    for key in ("sizes", "widths", "seeds"):
        n = want.get(key, DEFAULT_SEEDS[claim["test"]] if key == "seeds" else 1)
        if have[key] < n:
            noun = "widths (d_model)" if key == "widths" else key
            raise NotTestable(f"needs >= {n} {noun} (this grid has {have[key]})")


# ------------------------------------------------------------------------- verdicts

def scope_verdict(lo: float, hi: float, direction: str, margin: float | None = None) -> str:
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return INCONCLUSIVE
    if direction in ("lower", "decreasing"):
        return SUPPORTED if hi < 0 else CONTRADICTED if lo > 0 else INCONCLUSIVE
    if direction in ("higher", "increasing"):
        return SUPPORTED if lo > 0 else CONTRADICTED if hi < 0 else INCONCLUSIVE
    m = float(margin or 0.0)
    return SUPPORTED if (-m < lo and hi < m) else CONTRADICTED if (lo > m or hi < -m) else INCONCLUSIVE


def combine(verdicts: list[str]) -> str:
    if verdicts and all(v == SUPPORTED for v in verdicts):
        return SUPPORTED
    if CONTRADICTED in verdicts and SUPPORTED not in verdicts:
        return CONTRADICTED
    return INCONCLUSIVE


def fmt(x: float) -> str:
    return "n/a" if not math.isfinite(x) else f"{x:.3g}"


def _ci(ctx: Context, lo: float, hi: float) -> str:
    pct = f"{ctx.settings.confidence * 100:g} %"
    return f"{pct} CI {fmt(lo)} to {fmt(hi)}" if math.isfinite(lo) else "no interval"


# ------------------------------------------------------------------------- tests

def check_compare(claim: dict, ctx: Context) -> list[Finding]:
    """Paired differences method - against of the claim's statistic, per size (or across)."""
    pairs = []
    for sel_a, sel_b in claim["pairs"]:
        pairs += [(a, b) for a in matches(sel_a, ctx) for b in matches(sel_b, ctx) if a != b]
    if not pairs:
        wanted = " or ".join(f"{a} beside {_name(b, ctx)}" for a, b in claim["pairs"])
        raise NotTestable(f"needs {wanted}")
    needs(claim, ctx)
    stat, probe = claim["statistic"], claim.get("probe")
    words, unit = label(stat, probe)
    findings = []
    for a, b in pairs:
        ia, ib = ctx.grid.methods.index(a), ctx.grid.methods.index(b)
        pt, bs, across = values(ctx, stat, probe, claim.get("probe_hint", ""), pair=(ia, ib))
        scopes = [ACROSS] if across else list(ctx.grid.sizes)
        for si, scope in enumerate(scopes):
            est = float(pt[ia, si] - pt[ib, si])
            lo, hi = ctx.boot.interval(bs[:, ia, si] - bs[:, ib, si])
            verdict = scope_verdict(float(lo), float(hi), claim["direction"], claim.get("margin"))
            side = "below" if est < 0 else "above" if est > 0 else "equal to"
            detail = (f"{'across sizes' if across else 'at ' + scope}, {a}'s {words} is "
                      f"{' '.join(filter(None, [fmt(abs(est)), unit])) + ' ' if est else ''}{side} {b}'s "
                      f"({fmt(pt[ia, si])} vs {fmt(pt[ib, si])}; {_ci(ctx, float(lo), float(hi))})")
            if claim["direction"] == "equivalent":
                detail += f", margin +-{fmt(claim['margin'])}"
            numbers = f"{scope}: {a} − {b} = {fmt(est)} {unit} ({_ci(ctx, float(lo), float(hi))})"
            findings.append(Finding(scope, verdict, detail, a, b, est, float(lo), float(hi), numbers))
    return findings


def check_trend(claim: dict, ctx: Context) -> list[Finding]:
    """Slope of a method's statistic against log10(non-embedding parameters), across sizes."""
    methods = matches(claim["method"], ctx)
    if not methods:
        raise NotTestable(f"needs {claim['method']}")
    needs(claim, ctx)
    params = size_params(ctx.runs)
    x = np.log10([params.get(s, np.nan) for s in ctx.grid.sizes])
    words, unit = label(claim["statistic"], claim.get("probe"))
    findings = []
    for m in methods:
        i = ctx.grid.methods.index(m)
        pt, bs, _ = values(ctx, claim["statistic"], claim.get("probe"), claim.get("probe_hint", ""))
        est, reps = float(slope(pt[i], x)), slope(bs[:, i], x)
        lo, hi = ctx.boot.interval(reps)
        verdict = scope_verdict(float(lo), float(hi), claim["direction"])
        detail = (f"{m}'s {words} changes by {fmt(est)} {unit} per tenfold non-embedding parameters "
                  f"over {len(x)} sizes ({_ci(ctx, float(lo), float(hi))})")
        numbers = f"{m}: slope {fmt(est)} {unit} per tenfold size ({_ci(ctx, float(lo), float(hi))})"
        findings.append(Finding(ACROSS, verdict, detail, m, "", est, float(lo), float(hi), numbers))
    return findings


def check_holdout(claim: dict, ctx: Context) -> list[Finding]:
    """Fit the early attention logit on all sizes but the largest, predict which LRs diverge
    there. Supported when every LR with a prediction is right and the held-out size has both
    diverged and stable LRs; contradicted when at most half are right; else inconclusive."""
    methods = matches(claim["method"], ctx)
    if not methods:
        raise NotTestable(f"needs {claim['method']}")
    needs(claim, ctx)
    if "early_attn_logit" not in ctx.runs or ctx.runs["early_attn_logit"].isna().all():
        raise NotTestable("needs the first block's attention-logit probe in history.csv")
    findings = []
    for m in methods:
        table = holdout_attention(ctx.runs, m, claim.get("threshold", "calibrate"), ctx.grid.sizes)
        judged = table.dropna(subset=["correct"]) if not table.empty else table
        if judged.empty:
            level = table["threshold"].iloc[0] if not table.empty else math.nan
            why = ("no LR diverged (or none trained) at the fitted sizes to calibrate the level on"
                   if not math.isfinite(level) else "no LR could be fitted")
            findings.append(Finding(ACROSS, INCONCLUSIVE, f"{m}: {why}", m, numbers=f"{m}: {why}"))
            continue
        k, n = int(judged["correct"].astype(bool).sum()), len(judged)
        both = judged["observed_diverged"].astype(bool).nunique() == 2
        verdict = SUPPORTED if (k == n and both) else CONTRADICTED if k <= n / 2 else INCONCLUSIVE
        held = table["held_out"].iloc[0]
        fit = int(table["fit_sizes"].max())
        detail = (f"fitted on the {fit} smaller sizes (a {'line' if fit == 2 else 'quadratic'} in log-size), "
                  f"the early attention logit of {m} predicted divergence correctly at {k} of {n} LRs of {held} "
                  f"(level {fmt(float(table['threshold'].iloc[0]))})")
        if not both:
            detail += f"; every LR of {held} {'diverged' if judged['observed_diverged'].all() else 'trained'}, " \
                      "so there was nothing to tell apart"
        findings.append(Finding(ACROSS, verdict, detail, m, "", k / n,
                                numbers=f"{m}: {k} of {n} LRs of {held} predicted right"))
    return findings


def check_spikes(claim: dict, ctx: Context) -> list[Finding]:
    """Share of loss spikes within one probe interval of a reading above the probe family's
    threshold, against the share of all steps that are: enrichment = spike share / step share,
    with a bootstrap over runs. Supported if its interval lies above 1, contradicted if below."""
    needs(claim, ctx)
    fid = family_of(ctx.families, claim["probe"])
    cols = [f"{k}/{fid}" for k in ("spikes", "spikes_near", "near_steps")]
    hint = f" ({claim['probe_hint']})" if claim.get("probe_hint") else ""
    if fid is None or any(c not in ctx.runs for c in cols) or ctx.runs[cols[2]].isna().all():
        raise NotTestable(f"needs the {claim['probe']} probe with a threshold{hint}")
    r = ctx.runs.dropna(subset=cols[1:])
    counts = np.stack([r[cols[0]], r[cols[1]], r[cols[2]], r["steps"]], axis=1).astype(float)
    if counts[:, 0].sum() == 0:
        raise NotTestable("needs runs with loss spikes (none of the runs with this probe spiked)")

    def enrichment(c: np.ndarray) -> np.ndarray:
        spikes, near, near_steps, steps = (c[..., j].sum(axis=-1) for j in range(4))
        with np.errstate(divide="ignore", invalid="ignore"):
            share, base = near / spikes, near_steps / steps
            return np.where(near == 0, 0.0, share / base)

    rng = np.random.default_rng(ctx.settings.seed)
    reps = enrichment(counts[rng.integers(0, len(counts), size=(ctx.settings.resamples, len(counts)))])
    lo, hi = percentile_interval(reps, ctx.settings.confidence) if len(counts) > 1 else (math.nan, math.nan)
    est = float(enrichment(counts))
    spikes, near = counts[:, 0].sum(), counts[:, 1].sum()
    thr = ctx.families[fid].get("threshold")
    verdict = SUPPORTED if lo > 1 else CONTRADICTED if hi < 1 else INCONCLUSIVE
    detail = (f"{int(near)} of {int(spikes)} loss spikes came within one probe interval of a {claim['probe']} "
              f"reading above {fmt(thr)}, against {counts[:, 2].sum() / counts[:, 3].sum():.1%} of all steps: "
              f"{fmt(est)}x as often as chance ({_ci(ctx, float(lo), float(hi))}; bootstrap over {len(counts)} runs)")
    numbers = f"{fmt(est)}x as often as chance ({_ci(ctx, float(lo), float(hi))})"
    return [Finding("all runs", verdict, detail, estimate=est, lo=float(lo), hi=float(hi), numbers=numbers)]


TESTS = {"compare": check_compare, "trend": check_trend, "holdout_prediction": check_holdout,
         "spike_coincidence": check_spikes}


def check(claim: dict, ctx: Context) -> Result:
    """One claim's verdict on the runs of ctx."""
    if ctx.runs.empty:
        return Result(claim, NOT_TESTABLE, reason="needs runs")
    try:
        findings = TESTS[claim["test"]](claim, ctx)
    except NotTestable as exc:
        return Result(claim, NOT_TESTABLE, reason=str(exc))
    return Result(claim, combine([f.verdict for f in findings]), findings)


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
                "summary": verdict_phrase(res),
                "figure": f"figures/{catalog.figure_file(c['figure'])}", "source": c["source"]}
        if not res.findings:
            rows.append({**base, "scope": "", "scope_verdict": res.verdict, "detail": res.reason})
        for f in res.findings:
            rows.append({**base, "scope": f.scope, "scope_verdict": f.verdict, "method": f.method,
                         "against": f.against, "estimate": f.estimate, "ci_low": f.lo, "ci_high": f.hi,
                         "numbers": f.numbers, "detail": f.detail})
    return pd.DataFrame(rows, columns=CLAIM_COLUMNS)
