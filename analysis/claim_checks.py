"""How a claim is tested: which methods a claim means, what it needs, and the four tests.

Verdict of one scope (a size, or across sizes) from the interval of the paired difference
(compare) or of the slope (trend), at the benchmark's confidence (a t-interval over a cluster
bootstrap of seeds, analysis/bootstrap.py):
    lower / decreasing   supported if the interval lies below 0, contradicted if above 0
    higher / increasing  the mirror image
    equivalent           supported if it lies within +-margin, contradicted if it lies outside
anything else is inconclusive. holdout_prediction and spike_coincidence are described at their
functions.

Seeds a verdict at one size needs: PER_SIZE_SEEDS (5). A per-size difference rests on k seeds,
k - 1 degrees of freedom of seed-to-seed spread. At 3 seeds the cluster bootstrap has 10
distinct resamples, the spread is estimated from two degrees of freedom, and the statistics
compared here are sums over a handful of LR cells in which one seed diverging at one LR moves a
cell by several nats: the verdict is then decided by one cell of one seed (as happened to the
log-Z claim at 3 seeds). From 5 seeds on (126 distinct resamples, 4 degrees of freedom, t(4) =
2.78 instead of t(2) = 4.30) one seed's cell weighs a fifth. With fewer seeds a compare claim
is judged once, on the mean over sizes of the paired difference (its clusters are whole seeds
across every size, so pooling sizes does not pretend they are independent) and needs >= 2 sizes;
the per-size rows keep their estimate and interval with scope verdict NO_VERDICT. Each test returns one Finding per scope, or raises NotTestable with what the grid
lacks (methods, sizes, seeds, a probe). No method is named here: claims name them.

Sizes a method cannot act on: a claim with ``needs.layers`` (a method that grows depth does
nothing to a one-block model, which then trains as it would without it) is tested only on the
sizes of at least that many blocks (``deep_enough``); on a grid with none it is not testable,
never judged on runs where the method was a no-op.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from analysis.bootstrap import percentile_interval
from analysis.claim_stats import ACROSS, Context, NotTestable, label, values
from analysis.predict import holdout_attention
from analysis.probe_families import family_of
from analysis.runs import size_params
from analysis.statistics import slope

SUPPORTED, CONTRADICTED, INCONCLUSIVE, NOT_TESTABLE = "supported", "contradicted", "inconclusive", "not testable here"
VERDICTS = (SUPPORTED, CONTRADICTED, INCONCLUSIVE, NOT_TESTABLE)
NO_VERDICT = "no per-size verdict"  # a per-size row on fewer than PER_SIZE_SEEDS seeds (module doc)
PER_SIZE_SEEDS = 5
DEFAULT_SEEDS = {"compare": 2, "trend": 2, "holdout_prediction": 1, "spike_coincidence": 1}


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


def deep_enough(claim: dict, ctx: Context) -> tuple[Context, list[str]]:
    """(the context of the sizes with at least ``needs.layers`` blocks, the sizes left out);
    NotTestable when no size has that many. Without ``needs.layers`` (or without an n_layers
    column to read), ctx itself."""
    layers = (claim.get("needs") or {}).get("layers")
    if not layers or "n_layers" not in ctx.runs or ctx.runs.empty:
        return ctx, []
    deep = ctx.runs["n_layers"].fillna(0) >= layers
    if deep.all():
        return ctx, []
    who = claim["pairs"][0][0] if claim.get("pairs") else claim.get("method", "the method")
    if not deep.any():
        most = int(ctx.runs["n_layers"].max()) if ctx.runs["n_layers"].notna().any() else 0
        raise NotTestable(f"needs sizes of >= {layers} layers: {who} cannot act on fewer "
                          f"(this grid's sizes have {most} at most)")
    dropped = [s for s in ctx.grid.sizes if s not in set(ctx.runs.loc[deep, "size"].astype(str))]
    return Context.build(ctx.runs[deep], ctx.settings, ctx.families), dropped


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
    verdicts = [v for v in verdicts if v != NO_VERDICT]
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

def _pairs(claim: dict, ctx: Context) -> list[tuple[str, str]]:
    pairs = []
    for sel_a, sel_b in claim["pairs"]:
        pairs += [(a, b) for a in matches(sel_a, ctx) for b in matches(sel_b, ctx) if a != b]
    pairs = list(dict.fromkeys(pairs))  # two selectors may name the same labels
    if not pairs:
        wanted = " or ".join(f"{a} beside {_name(b, ctx)}" for a, b in claim["pairs"])
        raise NotTestable(f"needs {wanted}")
    return pairs


def _pooled_needs(ctx: Context) -> None:
    """With fewer than PER_SIZE_SEEDS seeds a per-size claim is judged on >= 2 sizes pooled."""
    k, n = len(ctx.grid.seeds), len(ctx.grid.sizes)
    if k < PER_SIZE_SEEDS and n < 2:
        raise NotTestable(f"needs >= {PER_SIZE_SEEDS} seeds for a verdict at one size, or >= 2 sizes to judge "
                          f"the mean over sizes (this grid has {k} seeds and {n} size)")


def check_compare(claim: dict, ctx: Context) -> list[Finding]:
    """Paired differences method - against of the claim's statistic, per size with >=
    PER_SIZE_SEEDS seeds, else as the mean over sizes (module doc); or across sizes."""
    pairs = _pairs(claim, ctx)
    needs(claim, ctx)
    stat, probe = claim["statistic"], claim.get("probe")
    words, unit = label(stat, probe)
    k = len(ctx.grid.seeds)
    per_size = k >= PER_SIZE_SEEDS
    findings = []
    for a, b in pairs:
        ia, ib = ctx.grid.methods.index(a), ctx.grid.methods.index(b)
        pt, bs, across = values(ctx, stat, probe, claim.get("probe_hint", ""), pair=(ia, ib))
        if not across:
            _pooled_needs(ctx)
        scopes = [ACROSS] if across else list(ctx.grid.sizes)
        diff_pt, diff_bs = pt[ia] - pt[ib], bs[:, ia] - bs[:, ib]
        for si, scope in enumerate(scopes):
            est = float(diff_pt[si])
            lo, hi = (float(x) for x in ctx.boot.interval(diff_bs[:, si], est))
            judged = across or per_size
            verdict = scope_verdict(lo, hi, claim["direction"], claim.get("margin")) if judged else NO_VERDICT
            side = "below" if est < 0 else "above" if est > 0 else "equal to"
            detail = (f"{'across sizes' if across else 'at ' + scope}, {a}'s {words} is "
                      f"{' '.join(filter(None, [fmt(abs(est)), unit])) + ' ' if est else ''}{side} {b}'s "
                      f"({fmt(pt[ia, si])} vs {fmt(pt[ib, si])}; {_ci(ctx, lo, hi)})")
            if claim["direction"] == "equivalent":
                detail += f", margin +-{fmt(claim['margin'])}"
            if not judged:
                detail += f"; no verdict at one size with {k} seeds (a per-size verdict needs >= {PER_SIZE_SEEDS})"
            numbers = f"{scope}: {a} − {b} = {fmt(est)} {unit} ({_ci(ctx, lo, hi)})"
            findings.append(Finding(scope, verdict, detail, a, b, est, lo, hi, numbers))
        if not (across or per_size):
            both = np.isfinite(diff_pt)
            est = float(diff_pt[both].mean()) if both.any() else math.nan
            lo, hi = (float(x) for x in ctx.boot.interval(diff_bs[:, both].mean(axis=1), est)) \
                if both.any() else (math.nan, math.nan)
            verdict = scope_verdict(lo, hi, claim["direction"], claim.get("margin"))
            detail = (f"mean over {int(both.sum())} sizes, {a}'s {words} minus {b}'s is {fmt(est)}"
                      f"{' ' + unit if unit else ''} ({_ci(ctx, lo, hi)}; {k} seeds, resampled whole across sizes)")
            if claim["direction"] == "equivalent":
                detail += f", margin +-{fmt(claim['margin'])}"
            numbers = f"mean over sizes: {a} − {b} = {fmt(est)} {unit} ({_ci(ctx, lo, hi)})"
            findings.append(Finding(ACROSS, verdict, detail, a, b, est, lo, hi, numbers))
    return findings


def check_trend(claim: dict, ctx: Context) -> list[Finding]:
    """Slope against log10(non-embedding parameters), across sizes, of a method's statistic
    (``method``) or of the paired difference method - against (``pairs``)."""
    if "pairs" in claim:
        pairs = _pairs(claim, ctx)
    else:
        pairs = [(m, "") for m in matches(claim["method"], ctx)]
        if not pairs:
            raise NotTestable(f"needs {claim['method']}")
    needs(claim, ctx)
    params = size_params(ctx.runs)
    x = np.log10([params.get(s, np.nan) for s in ctx.grid.sizes])
    words, unit = label(claim["statistic"], claim.get("probe"))
    findings = []
    for m, against in pairs:
        i = ctx.grid.methods.index(m)
        j = ctx.grid.methods.index(against) if against else None
        pt, bs, _ = values(ctx, claim["statistic"], claim.get("probe"), claim.get("probe_hint", ""),
                           pair=(i, j) if against else None)
        y_pt, y_bs = (pt[i] - pt[j], bs[:, i] - bs[:, j]) if against else (pt[i], bs[:, i])
        est, reps = float(slope(y_pt, x)), slope(y_bs, x)
        lo, hi = (float(v) for v in ctx.boot.interval(reps, est))
        verdict = scope_verdict(lo, hi, claim["direction"], claim.get("margin"))
        what = f"{m}'s {words} minus {against}'s" if against else f"{m}'s {words}"
        detail = (f"{what} changes by {fmt(est)} {unit} per tenfold non-embedding parameters "
                  f"over {len(x)} sizes ({_ci(ctx, lo, hi)})")
        who = f"{m} − {against}" if against else m
        numbers = f"{who}: slope {fmt(est)} {unit} per tenfold size ({_ci(ctx, lo, hi)})"
        findings.append(Finding(ACROSS, verdict, detail, m, against, est, lo, hi, numbers))
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
