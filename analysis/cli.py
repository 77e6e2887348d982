"""Command-line entry points called by the Snakemake rules (`python -m analysis ...`).

    python -m analysis aggregate --metrics M1 M2 ... [--evals E1 E2 ...] --runs-csv runs.csv
    python -m analysis score --runs-csv runs.csv --sizes s64 s128 \
        --scores-csv scores.csv --leaderboard-csv leaderboard.csv
    python -m analysis figures --runs-csv runs.csv --scores-csv scores.csv \
        --sizes s64 s128 --outdir figures/
    python -m analysis report --leaderboard-csv leaderboard.csv --runs-csv runs.csv \
        --figures-dir figures/ --benchmark-yaml benchmarks/x.yaml \
        --method-docs docs.json --provenance provenance.json --out report.html

Each subcommand reads files and writes files (atomically) and nothing else, so each
maps onto one rule with named inputs and outputs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd
import yaml

from stabench.io import write_dataframe_csv
from analysis.runs import as_bool, as_text

FIGURES = ("loss_vs_lr", "sensitivity_vs_size", "attn_logit_vs_lr", "loss_curves", "log_z")
DIAGNOSTIC_FIGURES = ("output_logit_divergence", "instability_prediction", "grad_rms_vs_size",
                      "best_lr_vs_width", "probes", "curvature")
DIAGNOSTIC_TABLES = ("log_z_drift", "instability_prediction")
FIGURE_FILES = {name: f"{name}.png" for name in FIGURES + DIAGNOSTIC_FIGURES}  # report key -> file
TABLE_FILES = {name: f"{name}.csv" for name in DIAGNOSTIC_TABLES}


def read_table(path: Path | str, bool_cols: tuple[str, ...] = ("diverged", "changes_lr_meaning"),
               ) -> pd.DataFrame:
    """Read one of our CSVs back with bool and text columns restored (CSV loses dtypes)."""
    df = pd.read_csv(path)
    for col in bool_cols:
        if col in df:
            df[col] = as_bool(df[col])
    for col in ("method", "size"):
        if col in df:
            df[col] = df[col].astype(str)
    for col in ("method_versions", "missing_sizes", "eval_status", "eval_skipped"):
        if col in df:
            df[col] = as_text(df[col])
    return df


def cmd_aggregate(a: argparse.Namespace) -> None:
    from analysis.runs import collect_runs, join_evals
    runs = collect_runs([Path(p) for p in a.metrics])
    if a.evals:
        runs = join_evals(runs, [Path(p) for p in a.evals])
    write_dataframe_csv(a.runs_csv, runs)


def cmd_score(a: argparse.Namespace) -> None:
    from analysis.leaderboard import leaderboard
    from analysis.sensitivity import score
    scores = score(read_table(a.runs_csv))
    write_dataframe_csv(a.scores_csv, scores)
    write_dataframe_csv(a.leaderboard_csv, leaderboard(scores, a.sizes, runs=read_table(a.runs_csv)))


def _n_params(runs: pd.DataFrame) -> dict[str, float]:
    if "n_params" not in runs or runs.empty:
        return {}
    return runs.groupby("size")["n_params"].median().to_dict()


def cmd_figures(a: argparse.Namespace) -> None:
    from analysis import figures as F
    from analysis.report import choose_curve_runs
    from analysis.runs import load_history
    runs = read_table(a.runs_csv)
    scores = read_table(a.scores_csv)
    palette = F.method_palette(runs["method"])
    out = Path(a.outdir)
    F.save_png(F.loss_vs_lr(runs, a.sizes, palette), out / FIGURE_FILES["loss_vs_lr"])
    F.save_png(F.sensitivity_vs_size(scores, a.sizes, _n_params(runs), palette),
               out / FIGURE_FILES["sensitivity_vs_size"])
    F.save_png(F.attn_logit_vs_lr(runs, a.sizes, palette), out / FIGURE_FILES["attn_logit_vs_lr"])
    histories, methods = {}, {}
    chosen = choose_curve_runs(runs, a.sizes)
    for run_dir in chosen:
        r = runs[runs["run_dir"] == run_dir].iloc[0]
        if not (Path(run_dir) / "history.csv").exists():
            continue
        label = f"{r['method']} {r['size']} lr={r['lr']:g}" + (" (diverged)" if r["diverged"] else "")
        histories[label] = load_history(run_dir)
        methods[label] = r["method"]
    F.save_png(F.loss_curves(histories, methods, palette), out / FIGURE_FILES["loss_curves"])
    F.save_png(F.log_z_curves(histories, methods, palette), out / FIGURE_FILES["log_z"])
    diagnostics(runs, scores, a.sizes, palette, out)


def diagnostics(runs: pd.DataFrame, scores: pd.DataFrame, sizes: list[str], palette: dict, out: Path) -> None:
    """The stability-diagnostics figures and tables, from every run's probe history."""
    from analysis import diagnostics as D
    from analysis.figures import save_png
    from analysis.predict import early_attention_logits, predict_instability
    from analysis.runs import load_history
    if runs.empty:  # Snakemake still needs every declared output
        for name in DIAGNOSTIC_FIGURES:
            save_png(D._empty_figure(name.replace("_", " "), "no runs"), out / FIGURE_FILES[name])
        for name in DIAGNOSTIC_TABLES:
            write_dataframe_csv(out / TABLE_FILES[name], pd.DataFrame())
        return
    histories = {d: load_history(d) for d in runs["run_dir"] if (Path(d) / "history.csv").exists()}
    size = D._largest_size(runs, sizes)
    lr = D.chosen_lr(runs, size)
    save_png(D.log_z_figure(runs, histories, sizes, palette), out / FIGURE_FILES["output_logit_divergence"])
    drift = D.log_z_drift_table(runs, histories)
    write_dataframe_csv(out / TABLE_FILES["log_z_drift"], drift)
    early = early_attention_logits(runs, histories)
    reference = "baseline" if (runs["method"] == "baseline").any() else runs["method"].iloc[0]
    save_png(D.instability_figure(early, reference, palette), out / FIGURE_FILES["instability_prediction"])
    prediction = predict_instability(early, reference) if not early.empty else pd.DataFrame()
    write_dataframe_csv(out / TABLE_FILES["instability_prediction"], prediction)
    save_png(D.grad_rms_figure(D.grad_rms_table(runs, histories), lr, palette), out / FIGURE_FILES["grad_rms_vs_size"])
    save_png(D.best_lr_vs_width(scores, runs, palette), out / FIGURE_FILES["best_lr_vs_width"])
    save_png(D.probe_panels(runs, histories, size, lr, palette), out / FIGURE_FILES["probes"])
    save_png(D.curvature_figure(runs, histories, palette=palette), out / FIGURE_FILES["curvature"])


def _read_json(path: str | None) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8")) if path else {}


def cmd_report(a: argparse.Namespace) -> None:
    from analysis.report import build_report
    settings = yaml.safe_load(Path(a.benchmark_yaml).read_text(encoding="utf-8")) or {}
    name = a.benchmark_name or (settings.get("name") if isinstance(settings, dict) else None) \
        or Path(a.benchmark_yaml).stem
    figdir = Path(a.figures_dir)
    figs = {k: figdir / f for k, f in FIGURE_FILES.items() if (figdir / f).exists()}
    tables = {k: pd.read_csv(figdir / f) for k, f in TABLE_FILES.items()
              if (figdir / f).exists() and (figdir / f).stat().st_size > 1}
    lb = read_table(a.leaderboard_csv, bool_cols=("changes_lr_meaning", "complete"))
    build_report(Path(a.out), benchmark_name=str(name), leaderboard_df=lb,
                 runs_df=read_table(a.runs_csv), figure_pngs=figs,
                 method_docs=_read_json(a.method_docs), settings=settings,
                 provenance=_read_json(a.provenance), tables=tables)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m analysis",
                                description="stabench analysis: aggregate, score, figures, report")
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("aggregate", help="metrics.json files -> runs.csv")
    s.add_argument("--metrics", nargs="*", default=[], required=True, help="metrics.json paths")
    s.add_argument("--evals", nargs="*", default=[],
                   help="zero-shot eval records (stabench eval) to join as eval/<task>/<metric> columns")
    s.add_argument("--runs-csv", required=True)
    s.set_defaults(func=cmd_aggregate)

    s = sub.add_parser("score", help="runs.csv -> scores.csv (per method, size) + leaderboard.csv")
    s.add_argument("--runs-csv", required=True)
    s.add_argument("--sizes", nargs="+", required=True, help="model sizes, smallest to largest")
    s.add_argument("--scores-csv", required=True)
    s.add_argument("--leaderboard-csv", required=True)
    s.set_defaults(func=cmd_score)

    s = sub.add_parser("figures", help="runs.csv + scores.csv -> PNGs in --outdir")
    s.add_argument("--runs-csv", required=True)
    s.add_argument("--scores-csv", required=True)
    s.add_argument("--sizes", nargs="+", required=True)
    s.add_argument("--outdir", required=True)
    s.set_defaults(func=cmd_figures)

    s = sub.add_parser("report", help="leaderboard + runs + figures -> self-contained report.html")
    s.add_argument("--leaderboard-csv", required=True)
    s.add_argument("--runs-csv", required=True)
    s.add_argument("--figures-dir", required=True)
    s.add_argument("--benchmark-yaml", required=True)
    s.add_argument("--method-docs", help="JSON file: {method label: docstring}")
    s.add_argument("--provenance", help="JSON file: {key: value} (versions, git commit, date)")
    s.add_argument("--benchmark-name", help="default: 'name' in the YAML, else its file stem")
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_report)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.func(args)
    return 0
