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

FIGURE_FILES = {  # report key -> fixed file name
    "loss_vs_lr": "loss_vs_lr.png",
    "sensitivity_vs_size": "sensitivity_vs_size.png",
    "attn_logit_vs_lr": "attn_logit_vs_lr.png",
    "loss_curves": "loss_curves.png",
    "log_z": "log_z.png",
}


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


def _read_json(path: str | None) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8")) if path else {}


def cmd_report(a: argparse.Namespace) -> None:
    from analysis.report import build_report
    settings = yaml.safe_load(Path(a.benchmark_yaml).read_text(encoding="utf-8")) or {}
    name = a.benchmark_name or (settings.get("name") if isinstance(settings, dict) else None) \
        or Path(a.benchmark_yaml).stem
    figdir = Path(a.figures_dir)
    figs = {k: figdir / f for k, f in FIGURE_FILES.items() if (figdir / f).exists()}
    lb = read_table(a.leaderboard_csv, bool_cols=("changes_lr_meaning", "complete"))
    build_report(Path(a.out), benchmark_name=str(name), leaderboard_df=lb,
                 runs_df=read_table(a.runs_csv), figure_pngs=figs,
                 method_docs=_read_json(a.method_docs), settings=settings,
                 provenance=_read_json(a.provenance))


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
