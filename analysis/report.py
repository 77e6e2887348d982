"""One self-contained HTML report: leaderboard, figures, per-run table, method docs,
settings and provenance.

Self-contained means it opens offline from an e-mail attachment or a CI artifact: CSS is
inline, figures are base64 PNG data URIs, there is no JavaScript and no external URL.
Every piece of text from runs, docs or settings is HTML-escaped.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import math
from collections.abc import Mapping
from pathlib import Path

import pandas as pd
import yaml

from stabench.io import write_text
from analysis.leaderboard import sens_col
from analysis.runs import eval_columns

# Fixed figure names written by `python -m analysis figures`, in report order.
FIGURE_CAPTIONS = {
    "loss_vs_lr": "Final validation loss vs peak learning rate, one panel per model size "
                  "(the Figure-1 view of Wortsman et al.). A diverged run is drawn as an x at the "
                  "init loss l0 (dashed line), which is the value the metric gives it. A flat, "
                  "low curve is a robust method.",
    "sensitivity_vs_size": "LR sensitivity of each method vs model size (parameter count). "
                           "Lower is better; a rising line means the method gets more fragile "
                           "as models grow.",
    "attn_logit_vs_lr": "Largest attention logit (max over layers) at the end of training vs "
                        "peak LR. Wortsman et al. see divergence once it passes ~1e4 (dotted line); "
                        "qk-layernorm is meant to keep it bounded.",
    "loss_curves": "Training loss (lines) and validation loss (dots) vs step for each method's "
                   "best-LR run and highest-LR run at the largest size: a stable and an unstable "
                   "example.",
    "log_z": "Mean log Z (log-sum-exp of the output logits) vs step for the same runs. Drift "
             "away from 0 is the output-logit divergence that z-loss targets.",
}

# Stability diagnostics: name -> (title, caption). Shown in their own section, in this order.
DIAGNOSTICS = {
    "output_logit_divergence": (
        "Output-logit divergence",
        "Mean log Z of the output logits over training at the two highest LRs of the largest size, "
        "for the methods that differ in weight decay and z-loss (Wortsman et al. 2023, section 3.2). "
        "Without weight decay log Z drifts away; z-loss pulls it toward 0. The table gives each "
        "run's largest drift of log Z from its first probe."),
    "instability_prediction": (
        "Instability prediction",
        "The first block's max attention logit at 2% of training against model size, one colour per "
        "peak LR, fitted with a quadratic in log(parameters) and extrapolated to 4x the largest size "
        "(Wortsman et al. 2023, section 3.4). Crosses mark diverged runs; the red line is the ~1e4 "
        "level past which they see divergence. The table gives the predictions for 2x and 4x the "
        "largest size and, with 3+ sizes, the fit without the largest size against what it did."),
    "grad_rms_vs_size": (
        "Gradient RMS against Adam's epsilon",
        "Gradient RMS late in training against model size at one peak LR, per method, with each "
        "method's eps as a dotted line (and the size where a log-log fit reaches it, dashed). When "
        "gradients approach eps, Adam's update shrinks (Wortsman et al. 3.4; Everett et al. 2024)."),
    "best_lr_vs_width": (
        "Best LR against width",
        "Each method's best peak LR at each width. A flat line means the optimal LR transfers across "
        "widths, the promise of muParam and of Everett et al.'s per-layer LRs."),
    "probes": (
        "Probes over training",
        "Every probe family recorded in the runs (gradient and update RMS, Adam's second moment, "
        "gradient norm, curvature, WeSaR gates, sequence length, active blocks), one line per method "
        "at the largest size and the highest LR at which the baseline did not diverge."),
    "curvature": (
        "Preconditioned curvature",
        "lr x lambda_max of the Adam-preconditioned Hessian (power iteration on Hessian-vector "
        "products, warm-started; Ramasinghe et al.) against Adam's stability threshold 38, with the "
        "run's loss (grey) and its loss spikes (orange). Runs with the most spikes are shown."),
}

DIAGNOSTIC_TABLE = {"output_logit_divergence": "log_z_drift", "instability_prediction": "instability_prediction"}

CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1180px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}
h1{margin-bottom:.2em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.8em}
.sub{color:#666;margin-top:0}
table{border-collapse:collapse;font-size:.9em;margin:.6em 0}
th,td{border:1px solid #ddd;padding:.3em .55em;text-align:right;white-space:nowrap}
th{background:#f3f4f6}td.l,th.l{text-align:left}
tr.best td{background:#e7f6e7;font-weight:600}
tr.flag td{background:#fff6dd}tr.best.flag td{background:#eaf3d2}
tr.incomplete td{color:#888}
.badge{display:inline-block;font-size:.78em;padding:0 .45em;border-radius:.6em;margin-left:.3em;
font-weight:normal}
.b-flag{background:#f5c542;color:#442}.b-inc{background:#ddd;color:#444}
.note{background:#f7f7fb;border-left:4px solid #8a8fd8;padding:.5em 1em;margin:1em 0}
figure{margin:1.2em 0}figure img{max-width:100%;border:1px solid #eee}
figcaption{color:#444;font-size:.92em;margin-top:.3em}
pre{background:#f6f8fa;padding:.8em;overflow-x:auto;font-size:.85em;white-space:pre-wrap}
details{margin:.6em 0}summary{cursor:pointer;font-weight:600}
.scroll{overflow-x:auto}
"""


def esc(x) -> str:
    return html.escape("" if x is None else str(x), quote=True)


def _isnan(x) -> bool:
    try:
        return x is None or (isinstance(x, float) and math.isnan(x)) or pd.isna(x)
    except (TypeError, ValueError):
        return False


def fmt_num(x, digits: int = 4) -> str:
    if _isnan(x):
        return "—"
    x = float(x)
    if math.isinf(x):
        return "∞" if x > 0 else "-∞"
    return f"{x:.{digits}f}"


def fmt_g(x, digits: int = 3) -> str:
    """Learning rates, parameter counts, logits: compact general format."""
    return "—" if _isnan(x) else f"{float(x):.{digits}g}"


def fmt_int(x) -> str:
    return "—" if _isnan(x) else f"{int(round(float(x))):,}"


def png_data_uri(path: Path | str) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def choose_curve_runs(runs: pd.DataFrame, size_order: list[str] | None = None) -> list[str]:
    """run_dirs to draw as training curves: at the largest size, each method's best-LR run
    (lowest seed-averaged effective loss; lowest seed) and its highest-LR run (lowest
    seed), i.e. one stable and one unstable example per method. The largest size is the
    last of size_order present in runs, else the one with most parameters."""
    if runs.empty:
        return []
    present = set(runs["size"])
    ordered = [s for s in (size_order or []) if s in present]
    if ordered:
        size = ordered[-1]
    else:
        size = runs.groupby("size")["n_params"].median().sort_values(kind="stable").index[-1] \
            if "n_params" in runs else sorted(present)[-1]
    d = runs[runs["size"] == size]
    if "effective_loss" not in d:
        from analysis.runs import with_effective_loss
        d = with_effective_loss(d)
    chosen: list[str] = []
    for _, m in d.groupby("method", sort=True):
        cells = m.groupby("lr")["effective_loss"].mean()
        lrs = [cells.idxmin() if cells.notna().any() else cells.index.min(), cells.index.max()]
        for lr in lrs:
            r = m[m["lr"] == lr].sort_values("seed", kind="stable")
            run_dir = str(r["run_dir"].iloc[0])
            if run_dir not in chosen:
                chosen.append(run_dir)
    return chosen


def _leaderboard_html(lb: pd.DataFrame) -> str:
    sizes = [c[len("lr_sensitivity["):-1] for c in lb.columns if c.startswith("lr_sensitivity[")]
    largest = sizes[-1] if sizes else ""
    head = ["Rank", "Method", "LR sensitivity<br>(mean over sizes)",
            *[f"LR sens.<br>{esc(s)}" for s in sizes],
            f"Best loss<br>{esc(largest)}", f"Best LR<br>{esc(largest)}", "Diverged / runs"]
    evals = [c for c in lb.columns if c.startswith("eval/")]  # zero-shot, best-LR run at the largest size
    head += [f"{esc(c[len('eval/'):].rsplit('/', 1)[0])}<br>{esc(c.rsplit('/', 1)[1])} ({esc(largest)})"
             for c in evals]
    rows = []
    for _, r in lb.iterrows():
        cls = []
        badges = ""
        if int(r["rank"]) == 1:
            cls.append("best")
        if bool(r.get("changes_lr_meaning", False)):
            cls.append("flag")
            badges += '<span class="badge b-flag" title="changes what LR means: its LR ' \
                      'sensitivity is not comparable">rescales LR</span>'
        if "complete" in r and not bool(r["complete"]):
            cls.append("incomplete")
            badges += f'<span class="badge b-inc">missing {esc(r.get("missing_sizes", ""))}</span>'
        cells = [f"<td>{int(r['rank'])}</td>",
                 f'<td class="l">{esc(r["method"])}{badges}</td>',
                 f"<td>{fmt_num(r['lr_sensitivity'])}</td>",
                 *[f"<td>{fmt_num(r[sens_col(s)])}</td>" for s in sizes],
                 f"<td>{fmt_num(r['best_loss'])}</td>",
                 f"<td>{fmt_g(r['best_lr'])}</td>",
                 f"<td>{fmt_int(r['diverged'])} / {fmt_int(r['runs'])}</td>",
                 *[f"<td>{fmt_g(r[c], 4) if 'perplexity' in c else fmt_num(r[c], 3)}</td>" for c in evals]]
        rows.append(f'<tr class="{" ".join(cls)}">' + "".join(cells) + "</tr>")
    ths = "".join(f'<th class="l">{h}</th>' if h == "Method" else f"<th>{h}</th>" for h in head)
    return (f'<div class="scroll"><table id="leaderboard"><thead><tr>{ths}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table></div>")


RUN_TABLE = [  # (column, header, formatter)
    ("method", "Method", esc), ("size", "Size", esc), ("lr", "Peak LR", fmt_g),
    ("seed", "Seed", fmt_int), ("final_val_loss", "Final val loss", fmt_num),
    ("effective_loss", "Scored loss min(l, l0)", fmt_num), ("init_loss", "Init loss l0", fmt_num),
    ("diverged", "Diverged", lambda x: "yes" if bool(x) else ""),
    ("diverged_at_step", "Diverged at step", lambda x: "" if _isnan(x) else fmt_int(x)),
    ("steps", "Steps", fmt_int), ("tokens", "Tokens", fmt_int),
    ("wall_seconds", "Wall time (s)", lambda x: fmt_num(x, 1)),
    ("tokens_per_second", "Tokens/s", fmt_int),
    ("max_attn_logit", "Max attn logit", fmt_g), ("final_log_z", "Final log Z", lambda x: fmt_num(x, 3)),
    ("n_params", "Params", fmt_int), ("method_versions", "Versions", esc), ("run_dir", "Run folder", esc),
]


def _runs_html(runs: pd.DataFrame) -> str:
    cols = [c for c in RUN_TABLE if c[0] in runs.columns]
    ths = "".join(f'<th class="l">{h}</th>' if c in ("method", "run_dir", "method_versions") else
                  f"<th>{h}</th>" for c, h, _ in cols)
    rows = []
    for _, r in runs.iterrows():
        tds = "".join(
            f'<td class="l">{f(r[c])}</td>' if c in ("method", "run_dir", "method_versions")
            else f"<td>{f(r[c])}</td>" for c, _, f in cols)
        rows.append(f"<tr>{tds}</tr>")
    return (f'<div class="scroll"><table id="runs"><thead><tr>{ths}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table></div>")


EVAL_EXPLANATION = (
    "<p>Zero-shot scores through EleutherAI's lm-evaluation-harness (model <code>stabench</code>), "
    "on tasks built from the benchmark's <b>held-out</b> documents (never trained on): "
    "<b>stabench_cloze</b> (LAMBADA-style: predict the last word of a passage; <i>acc</i> = the "
    "word is the greedy continuation, <i>ll</i> = mean log-likelihood of the word in nats, "
    "<i>perplexity</i> = exp(−ll)) and <b>stabench_continuation</b> (HellaSwag-style: pick the "
    "true next sentence among 4, the three others being sentences of about the same length from "
    "other held-out documents; chance is 0.25; <i>acc_norm</i> divides each ending's "
    "log-likelihood by its length in characters). Columns marked "
    "<i>init</i> score the same model before training (same seed and method transforms): the gap "
    "is what training taught it. Tiny models score near chance on accuracies; the "
    "log-likelihood is the more sensitive number. By default only each method's best-LR run of "
    "each size is evaluated; the leaderboard's eval columns are those of the largest size. "
    "A diverged run is not evaluated.</p>")


def _eval_html(runs: pd.DataFrame) -> str:
    """The zero-shot section: a row per evaluated (or diverged, not evaluated) run."""
    if "eval_status" not in runs:
        return ""
    status = runs["eval_status"].fillna("").astype(str)
    rows_df = runs[status.isin(["evaluated", "diverged (not evaluated)"])]
    if rows_df.empty:
        return ""
    rows_df = rows_df.sort_values(["method", "size", "lr", "seed"], kind="stable")
    trained, init = eval_columns(runs, init=False), eval_columns(runs, init=True)
    cols = trained + init

    def header(c: str) -> str:
        task, metric = c[len("eval/"):].rsplit("/", 1)
        label = "init " + metric[len("init_"):] if metric.startswith("init_") else metric
        return f"{esc(task)}<br>{esc(label)}"

    def cell(c: str, x) -> str:
        metric = c.rsplit("/", 1)[-1]
        return fmt_g(x, 4) if "perplexity" in metric else fmt_num(x, 3)

    ths = "".join(['<th class="l">Method</th>', "<th>Size</th>", "<th>Peak LR</th>", "<th>Seed</th>",
                   '<th class="l">Status</th>', *[f"<th>{header(c)}</th>" for c in cols]])
    body = []
    for _, r in rows_df.iterrows():
        tds = [f'<td class="l">{esc(r["method"])}</td>', f"<td>{esc(r['size'])}</td>",
               f"<td>{fmt_g(r['lr'])}</td>", f"<td>{fmt_int(r['seed'])}</td>",
               f'<td class="l">{esc(r["eval_status"])}</td>', *[f"<td>{cell(c, r[c])}</td>" for c in cols]]
        body.append(f"<tr>{''.join(tds)}</tr>")
    table = (f'<div class="scroll"><table id="zero-shot"><thead><tr>{ths}</tr></thead>'
             f"<tbody>{''.join(body)}</tbody></table></div>")
    skipped = sorted({part.strip() for text in runs.get("eval_skipped", pd.Series(dtype=str)).fillna("")
                      for part in str(text).split("; ") if part.strip()})
    note = ("<p><b>Skipped tasks</b> (their data could not be loaded; the others ran):</p><ul>"
            + "".join(f"<li>{esc(s)}</li>" for s in skipped) + "</ul>") if skipped else ""
    return "<h2>Zero-shot evaluation</h2>" + EVAL_EXPLANATION + table + note


def _dl(d: Mapping) -> str:
    items = []
    for k, v in d.items():
        v = json.dumps(v, indent=1, default=str) if isinstance(v, (dict, list)) else v
        items.append(f'<tr><th class="l">{esc(k)}</th><td class="l">{esc(v)}</td></tr>')
    return f"<table>{''.join(items)}</table>"


def build_report(out_html: Path | str, *, benchmark_name: str, leaderboard_df: pd.DataFrame,
                 runs_df: pd.DataFrame, figure_pngs: Mapping[str, Path | str],
                 method_docs: Mapping[str, str], settings: Mapping, provenance: Mapping,
                 tables: Mapping[str, pd.DataFrame] | None = None) -> None:
    """Write the report to out_html (atomically).

    figure_pngs: name -> PNG path; names in FIGURE_CAPTIONS get their caption, others a
    caption from the name. method_docs: method label -> docstring. settings: the benchmark
    definition (shown as YAML). provenance: versions, git commit, date... (a
    'generated' timestamp is added if absent).
    """
    lb = leaderboard_df
    flagged = [m for m, f in zip(lb["method"], lb.get("changes_lr_meaning", [False] * len(lb))) if bool(f)]
    incomplete = [] if "complete" not in lb else list(lb.loc[~lb["complete"].astype(bool), "method"])
    sizes = [c[len("lr_sensitivity["):-1] for c in lb.columns if c.startswith("lr_sensitivity[")]
    n_div = int(runs_df["diverged"].astype(bool).sum()) if "diverged" in runs_df else 0

    parts = [f"<h1>stabench report: {esc(benchmark_name)}</h1>",
             f'<p class="sub">{len(lb)} methods · {len(runs_df)} training runs ({n_div} diverged) · '
             f"sizes {esc(', '.join(sizes))}</p>",
             "<h2>How to read this</h2>",
             "<p>Each method was trained at every peak learning rate (LR) of a grid, at each model "
             "size. Its <b>LR sensitivity</b> (Wortsman et al. 2023, <i>Small-scale proxies for "
             "large-scale Transformer training instabilities</i>, section 2.2) is the mean, over the "
             "LR grid, of <code>min(l, l0) − l*</code>: how much final validation loss the method "
             "loses by not being trained at its best LR. Here <code>l</code> is the final validation "
             "loss (averaged over seeds), <code>l0</code> the loss at initialization (≈ ln of the "
             "vocabulary size; a diverged run counts as <code>l0</code>), and <code>l*</code> the "
             "method's lowest loss on the grid at that size. <b>Lower is better</b>: 0 means the "
             "LR does not matter. The leaderboard ranks methods by LR sensitivity averaged over "
             "model sizes; ties go to the lower best loss.</p>",
             '<div class="note"><b>Caveats.</b><ul>'
             "<li>LR sensitivity ignores the absolute loss level: a method that never learns scores "
             "0. Always read the <b>best loss</b> column beside it (shown for the largest size, "
             f"{esc(largest_or(sizes))}).</li>"
             "<li>The metric is not comparable for methods that change what “LR” means "
             "(for example per-layer LR scaling): their grid covers different effective LRs. Such "
             "rows are marked <span class=\"badge b-flag\">rescales LR</span>"
             + (f": {esc(', '.join(flagged))}." if flagged else "; none in this benchmark.")
             + "</li><li>Losses are cross-entropy in nats per token on the benchmark's validation "
             "split; a grid that is too narrow understates every method's sensitivity.</li>"
             + (f"<li>Ranked last because some sizes are missing (their mean covers fewer sizes): "
                f"{esc(', '.join(incomplete))}.</li>" if incomplete else "")
             + "</ul></div>",
             "<h2>Leaderboard</h2>", _leaderboard_html(lb), _eval_html(runs_df)]

    main_figures = {k: v for k, v in figure_pngs.items() if k not in DIAGNOSTICS}
    if main_figures:
        parts.append("<h2>Figures</h2>")
        for name, path in main_figures.items():
            cap = FIGURE_CAPTIONS.get(name, name.replace("_", " ").capitalize() + ".")
            parts.append(f'<figure id="fig-{esc(name)}"><img alt="{esc(name)}" '
                         f'src="{png_data_uri(path)}"><figcaption>{esc(cap)}</figcaption></figure>')

    parts += _diagnostics_html(figure_pngs, tables or {})
    parts += ["<h2>All runs</h2>",
              f"<details><summary>Per-run table ({len(runs_df)} runs)</summary>"
              f"{_runs_html(runs_df)}</details>"]

    parts.append("<h2>Methods</h2>")
    for label in sorted(method_docs):
        parts.append(f"<h3>{esc(label)}</h3><pre>{esc(method_docs[label])}</pre>")

    parts += ["<h2>Benchmark settings</h2>",
              f"<pre>{esc(yaml.safe_dump(dict(settings), sort_keys=False, default_flow_style=False))}</pre>",
              "<h2>Provenance</h2>"]
    prov = dict(provenance)
    prov.setdefault("generated", _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"))
    parts.append(_dl(prov))

    doc = ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
           "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
           f"<title>stabench: {esc(benchmark_name)}</title><style>{CSS}</style></head><body>"
           + "\n".join(parts) + "</body></html>\n")
    write_text(out_html, doc)


def _table_html(df: pd.DataFrame, max_rows: int = 60) -> str:
    """A small numeric table: floats in 4 significant digits, at most ``max_rows`` rows."""
    shown = df.head(max_rows)
    head = "".join(f"<th>{esc(c)}</th>" for c in shown.columns)
    body = "".join("<tr>" + "".join(f"<td>{esc(fmt_g(v, 4) if isinstance(v, float) else v)}</td>" for v in row)
                   + "</tr>" for row in shown.itertuples(index=False))
    more = f"<p class=\"sub\">{len(df) - max_rows} more rows in the CSV.</p>" if len(df) > max_rows else ""
    return f"<table><tr>{head}</tr>{body}</table>{more}"


def _diagnostics_html(figure_pngs: Mapping[str, Path | str], tables: Mapping[str, pd.DataFrame]) -> list[str]:
    present = [name for name in DIAGNOSTICS if name in figure_pngs or name in tables]
    if not present:
        return []
    parts = ["<h2>Stability diagnostics</h2>"]
    for name in present:
        title, caption = DIAGNOSTICS[name]
        parts.append(f"<h3>{esc(title)}</h3>")
        if name in figure_pngs:
            parts.append(f'<figure id="fig-{esc(name)}"><img alt="{esc(name)}" src="{png_data_uri(figure_pngs[name])}">'
                         f"<figcaption>{esc(caption)}</figcaption></figure>")
        table = tables.get(DIAGNOSTIC_TABLE.get(name, ""))
        if table is not None and not table.empty:
            parts.append(f"<details><summary>Table</summary>{_table_html(table)}</details>")
    return parts


def largest_or(sizes: list[str]) -> str:
    return sizes[-1] if sizes else "n/a"
