"""One self-contained HTML report, rendered from the Jinja2 template analysis/templates/report.html.j2.

This module only gathers what the template shows (claims, leaderboard, figures with their
captions, tables, runs, method docs, settings, provenance) and formats numbers; the words and
the layout live in the template, and each figure's caption in workflow/report/figures/<name>.rst
(the file `snakemake --report` uses too), rendered from reStructuredText with docutils.

Self-contained means it opens offline from an e-mail attachment or a CI artifact: CSS is
inline, figures are base64 PNG data URIs, there is no JavaScript and no external URL. Each
figure also links its SVG by a path relative to the report (there when the results folder
travels with it). A figure with nothing to draw shows its sentence instead of a picture. Jinja2
autoescapes every piece of text from runs, docs or settings.

Readable for a researcher at 1280 px: the leaderboard's main table holds the ranking columns
only; per-size sensitivities and zero-shot scores open in a details view, each zero-shot
column named in words with a one-line legend that says which way is better.
"""

from __future__ import annotations

import base64
import datetime as _dt
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path

import jinja2
import pandas as pd
import yaml
from docutils.core import publish_parts
from PIL import Image

from stabench.io import write_text
from analysis import catalog
from analysis.claims import CONTRADICTED, INCONCLUSIVE, NOT_TESTABLE, SUPPORTED
from analysis.leaderboard import sens_col
from analysis.runs import eval_columns
from analysis.settings import Settings

TEMPLATES = Path(__file__).resolve().parent / "templates"


def _isnan(x) -> bool:
    try:
        return x is None or pd.isna(x)
    except (TypeError, ValueError):
        return False


def num(x, digits: int = 4) -> str:
    if _isnan(x):
        return "—"
    x = float(x)
    return ("∞" if x > 0 else "-∞") if math.isinf(x) else f"{x:.{digits}f}"


def gen(x, digits: int = 3) -> str:
    """Learning rates, parameter counts, logits: compact general format."""
    return "—" if _isnan(x) else f"{float(x):.{digits}g}"


def integer(x) -> str:
    return "—" if _isnan(x) else f"{int(round(float(x))):,}"


def interval(lo, hi, fmt=num) -> str:
    """'lo – hi', or '' when there is no interval (one seed)."""
    return "" if _isnan(lo) or _isnan(hi) else f"{fmt(lo)} – {fmt(hi)}"


def png_data_uri(path: Path | str) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def empty_reason(png: Path | str) -> str | None:
    """The sentence a figure with nothing to draw carries (analysis.figures.save_figure), or None."""
    with Image.open(png) as im:
        return im.text.get(catalog.EMPTY_KEY) or None


def figure_context(name: str, png: Path, out_html: Path, captions_dir, tables: list[dict]) -> dict:
    """What the template shows of one figure: the embedded PNG, or its sentence when it has
    nothing to draw, and the SVG beside it as a link relative to the report."""
    title = catalog.FIGURES[name][0]
    svg = Path(png).with_name(catalog.svg_file(name))
    reason = empty_reason(png)
    return {"name": name, "title": title, "empty": reason, "src": None if reason else png_data_uri(png),
            "svg": os.path.relpath(svg, Path(out_html).resolve().parent) if svg.exists() and not reason else None,
            "caption": caption_html(captions_dir, name), "tables": tables}


TASK_NAMES = {  # lm-eval task -> what a reader calls it (stabench's own tasks: stabench/evaluation/tasks.py)
    "stabench_cloze": "Cloze (last word)",
    "stabench_continuation": "Next sentence (1 of 4)",
}
METRICS = {  # lm-eval metric -> (readable name, which way is better, what it measures)
    "acc": ("accuracy", "higher", "share of examples answered right"),
    "acc_norm": ("accuracy, length-normalised", "higher",
                 "each ending's log-likelihood divided by its length in characters before picking"),
    "ll": ("log-likelihood (nats)", "higher", "mean log-probability of the right answer; 0 is certain"),
    "perplexity": ("perplexity", "lower", "exp(−log-likelihood) of the right answer; it grows exponentially, "
                   "so a large one is also given as e^x, x being minus the log-likelihood in nats"),
}
HUGE_PERPLEXITY = 1e3  # above this a perplexity reads better as e^(−log-likelihood)


def eval_header(column: str) -> dict:
    """eval/<task>/<metric> (init_<metric>: before training) -> readable name, direction and
    a one-line legend; an unknown task or metric keeps its own name."""
    task, metric = column[len("eval/"):].rsplit("/", 1)
    init = metric.startswith("init_")
    base = metric[len("init_"):] if init else metric
    name, better, what = METRICS.get(base, (base, "", ""))
    return {"column": column, "task": TASK_NAMES.get(task, task), "metric": ("before training: " if init else "") + name,
            "better": better, "what": what, "raw": f"{task} {metric}", "init": init}


def eval_value(column: str, x) -> tuple[str, str]:
    """A zero-shot value and its hint: a huge perplexity also as e^(nats), the scale it lives on
    (7.3e+09 is a log-likelihood of −22.7 nats, not a broken number)."""
    if "perplexity" not in column:
        return num(x, 3), ""
    if _isnan(x) or float(x) < HUGE_PERPLEXITY:
        return gen(x, 4), ""
    return gen(x, 2), f"= e^{math.log(float(x)):.1f}"


def caption_html(captions_dir: Path | str | None, name: str) -> str:
    """The figure's caption file rendered to an HTML fragment ('' when there is none)."""
    path = Path(captions_dir) / f"{name}.rst" if captions_dir else None
    if path is None or not path.exists():
        return ""
    parts = publish_parts(path.read_text(encoding="utf-8"), writer="html5",
                          settings_overrides={"doctitle_xform": False, "report_level": 5, "halt_level": 5})
    return parts["fragment"]


def environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(num=num, gen=gen, integer=integer, interval=interval)
    return env


def claims_context(claims: pd.DataFrame) -> dict:
    """Claims grouped for the template: tested ones (a sentence each) and not-testable ones."""
    tested, untested = [], []
    for cid, rows in claims.groupby("claim_id", sort=False):
        first = rows.iloc[0]
        entry = {"id": cid, "claim": str(first["claim"]).strip().rstrip("."), "verdict": first["verdict"],
                 "summary": str(first["summary"]), "numbers": [str(n) for n in rows["numbers"].dropna() if str(n)],
                 "figure": Path(str(first["figure"])).stem, "source": first["source"],
                 "reason": "" if pd.isna(first["detail"]) else str(first["detail"])}
        (untested if first["verdict"] == NOT_TESTABLE else tested).append(entry)
    order = {SUPPORTED: 0, CONTRADICTED: 1, INCONCLUSIVE: 2}
    tested.sort(key=lambda e: order.get(e["verdict"], 3))
    return {"tested": tested, "untested": untested}


def leaderboard_rows(lb: pd.DataFrame, sizes: list[str]) -> list[dict]:
    rows = []
    evals = [c for c in lb.columns if c.startswith("eval/")]
    for _, r in lb.iterrows():
        rows.append({
            "rank": int(r["rank"]), "shared": bool(r.get("rank_shared", False)), "method": r["method"],
            "status": str(r.get("status") or "") if not _isnan(r.get("status")) else "",
            "never": bool(str(r.get("never_learned_sizes") or "").strip()) if not _isnan(r.get("never_learned_sizes")) else False,
            "incomplete": not bool(r.get("complete", True)),
            "rescales": bool(r.get("changes_lr_meaning", False)),
            "sens": (num(r["lr_sensitivity"]), interval(r["lr_sensitivity_lo"], r["lr_sensitivity_hi"])),
            "per_size": [(num(r[sens_col(s)]), interval(r[sens_col(s, "_lo")], r[sens_col(s, "_hi")])) for s in sizes],
            "best_loss": (num(r["best_loss"]), interval(r["best_loss_lo"], r["best_loss_hi"])),
            "best_lr": (gen(r["best_lr"]), interval(r["best_lr_lo"], r["best_lr_hi"], gen)),
            "diverged": f"{integer(r['diverged'])} / {integer(r['runs'])}",
            "evals": [eval_value(c, r[c]) for c in evals]})
    return rows


def eval_context(runs: pd.DataFrame) -> dict | None:
    """The zero-shot section: a row per evaluated (or diverged, not evaluated) run."""
    if "eval_status" not in runs:
        return None
    status = runs["eval_status"].fillna("").astype(str)
    rows = runs[status.isin(["evaluated", "diverged (not evaluated)"])]
    if rows.empty:
        return None
    rows = rows.sort_values(["method", "size", "lr", "seed"], kind="stable")
    cols = eval_columns(runs, init=False) + eval_columns(runs, init=True)
    skipped = sorted({p.strip() for t in runs.get("eval_skipped", pd.Series(dtype=str)).fillna("")
                      for p in str(t).split("; ") if p.strip()})
    return {"headers": [eval_header(c) for c in cols], "skipped": skipped,
            "rows": [{"method": r["method"], "size": r["size"], "lr": gen(r["lr"]), "seed": integer(r["seed"]),
                      "status": r["eval_status"], "values": [eval_value(c, r[c]) for c in cols]}
                     for _, r in rows.iterrows()]}


def reference_context(runs: pd.DataFrame, reference: Mapping | None) -> dict | None:
    """Which runs were taken from reference results (runs.csv source: reference), per method,
    and where from (commit, machine, date); None when every run was trained here."""
    if "source" not in runs or not (runs["source"].astype(str) == "reference").any():
        return None
    from_ref = runs["source"].astype(str) == "reference"
    methods = []
    for method, group in runs.groupby("method", sort=False):
        ref = from_ref[group.index]
        if ref.any():
            sizes = list(dict.fromkeys(group.loc[ref, "size"].astype(str)))
            methods.append({"method": method, "all": bool(ref.all()), "sizes": ", ".join(sizes)})
    about = dict(reference or {})
    prov = dict(about.get("provenance") or {})
    return {"n": int(from_ref.sum()), "methods": methods, "folder": about.get("folder", ""),
            "commit": prov.get("git commit", ""), "machine": prov.get("machine") or prov.get("host", ""),
            "date": str(prov.get("date", ""))[:10], "benchmark": prov.get("benchmark", ""),
            "trained": sorted(set(runs.loc[~from_ref, "method"].astype(str)))}


RUN_TABLE = [  # (column, header, formatter)
    ("method", "Method", str), ("size", "Size", str), ("lr", "Peak LR", gen), ("seed", "Seed", integer),
    ("final_val_loss", "Final val loss", num), ("effective_loss", "Scored loss min(l, l0)", num),
    ("init_loss", "This run's init loss", num),
    ("diverged", "Diverged", lambda x: "yes" if bool(x) else ""),
    ("diverged_at_step", "Diverged at step", lambda x: "" if _isnan(x) else integer(x)),
    ("steps", "Steps", integer), ("tokens", "Tokens", integer),
    ("wall_seconds", "Wall time (s)", lambda x: num(x, 1)), ("tokens_per_second", "Tokens/s", integer),
    ("max_attn_logit", "Max attn logit", gen), ("final_log_z", "Final log Z", lambda x: num(x, 3)),
    ("loss_spikes", "Loss spikes", integer), ("n_params_non_embedding", "Non-emb. params", integer),
    ("method_versions", "Versions", str), ("run_dir", "Run folder", str), ("source", "Source", str),
]


EXTRAPOLATIONS = {  # a figure table's column (analysis/predict.py) that may leave the data -> a header that says so
    "predicted_logit_2x": "extrapolation: logit at 2x the largest size",
    "predicted_logit_4x": "extrapolation: logit at 4x the largest size",
    "params_at_eps": "params where the fit reaches eps (an extrapolation unless within the sizes measured)",
}


def table_context(df: pd.DataFrame, max_rows: int = 60) -> dict:
    """A small table: floats in 4 significant digits, at most max_rows rows; a column that
    extrapolates beyond the data is headed as an extrapolation."""
    shown = df.head(max_rows)
    return {"columns": [EXTRAPOLATIONS.get(c, c) for c in shown.columns], "more": max(len(df) - max_rows, 0),
            "rows": [[gen(v, 4) if isinstance(v, float) else ("" if _isnan(v) else str(v)) for v in row]
                     for row in shown.itertuples(index=False)]}


def build_report(out_html: Path | str, *, benchmark_name: str, settings: Settings, leaderboard_df: pd.DataFrame,
                 runs_df: pd.DataFrame, claims_df: pd.DataFrame, figure_pngs: Mapping[str, Path | str],
                 tables: Mapping[str, pd.DataFrame], captions_dir: Path | str | None,
                 method_docs: Mapping[str, str], benchmark: Mapping, provenance: Mapping,
                 costs: pd.DataFrame | None = None, reference: Mapping | None = None) -> None:
    """Render the template to out_html (atomically). ``reference``: where the runs whose source
    is reference came from (the workflow's reference.json)."""
    lb = leaderboard_df
    sizes = [c[len("lr_sensitivity["):-1] for c in lb.columns if c.startswith("lr_sensitivity[")]
    seeds = int(runs_df["seed"].nunique()) if "seed" in runs_df and not runs_df.empty else 0
    figures = {}
    for name, (_, section) in catalog.FIGURES.items():
        if name not in figure_pngs:
            continue
        tabs = [table_context(tables[t]) for t, fig in catalog.TABLES.items()
                if fig == name and t in tables and not tables[t].empty]
        figures.setdefault(section, []).append(figure_context(name, Path(figure_pngs[name]), Path(out_html),
                                                              captions_dir, tabs))
    prov = dict(provenance)
    prov.setdefault("generated", _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"))
    context = {
        "name": benchmark_name, "settings": settings, "sizes": sizes, "seeds": seeds,
        "n_methods": len(lb), "n_runs": len(runs_df), "n_lrs": int(runs_df["lr"].nunique()) if "lr" in runs_df else 0,
        "n_diverged": int(runs_df["diverged"].astype(bool).sum()) if "diverged" in runs_df else 0,
        "claims": claims_context(claims_df), "claim_rows": table_context(claims_df.drop(
            columns=[c for c in ("claim", "sentence", "source", "confidence") if c in claims_df]), max_rows=200),
        "leaderboard": leaderboard_rows(lb, sizes),
        "eval_headers": [eval_header(c) for c in lb.columns if c.startswith("eval/")],
        "flagged": [m for m, f in zip(lb["method"], lb.get("changes_lr_meaning", [])) if bool(f)],
        "never": list(lb.loc[lb.get("never_learned_sizes", pd.Series("", index=lb.index)).fillna("").astype(str) != "",
                             "method"]) if not lb.empty else [],
        "figures": figures, "eval": eval_context(runs_df),
        "reference": reference_context(runs_df, reference),
        "runs": {"headers": [h for c, h, _ in RUN_TABLE if c in runs_df],
                 "rows": [[f(r[c]) for c, _, f in RUN_TABLE if c in runs_df] for _, r in runs_df.iterrows()]},
        "costs": [{"method": r.method, "train": f"{num(r.train_seconds / 60, 1)} min" if not _isnan(r.train_seconds) else "—",
                   "train_jobs": integer(r.train_jobs), "train_peak": integer(r.train_peak_mb),
                   "eval": f"{num(r.eval_seconds / 60, 1)} min" if not _isnan(r.eval_seconds) else "—",
                   "eval_jobs": integer(r.eval_jobs), "eval_peak": integer(r.eval_peak_mb)}
                  for r in (costs if costs is not None else pd.DataFrame()).itertuples()],
        "method_docs": dict(sorted(method_docs.items())),
        "benchmark_yaml": yaml.safe_dump(dict(benchmark), sort_keys=False, default_flow_style=False),
        "provenance": {k: json.dumps(v, indent=1, default=str) if isinstance(v, (dict, list)) else v
                       for k, v in prov.items()},
        "css": (TEMPLATES / "report.css").read_text(encoding="utf-8"),
    }
    write_text(out_html, environment().get_template("report.html.j2").render(**context))
