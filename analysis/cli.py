"""Command-line entry points called by the Snakemake rules (`python -m analysis ...`).

    python -m analysis aggregate --metrics M1 M2 ... [--evals E1 ...] [--reference-rows R] --benchmark-yaml B \
        --runs-csv runs.csv
    python -m analysis score --runs-csv runs.csv --benchmark-yaml B --scores-csv S --leaderboard-csv L
    python -m analysis claims --runs-csv runs.csv --benchmark-yaml B --claims-dir claims/ [...] --claims-csv C
    python -m analysis figures --runs-csv runs.csv --scores-csv S --benchmark-yaml B --outdir figures/
    python -m analysis report --leaderboard-csv L --runs-csv runs.csv --claims-csv C --figures-dir figures/ \
        --captions-dir workflow/report/figures --benchmark-yaml B --method-docs D --provenance P --out report.html

B is the resolved benchmark (results/<bench>/benchmark.yaml): analysis/settings.py reads l0,
the reference method, margins and bootstrap settings from it, the same way in every step.
Each subcommand reads files and writes files (atomically) and nothing else, so each maps onto
one rule with named inputs and outputs. runs.csv carries a record (runs.csv.json,
analysis/tables.py): a runs.csv that does not match it is rebuilt before it is read.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd
import yaml

from stabench.io import write_dataframe_csv
from analysis import catalog, tables
from analysis.runs import as_bool, as_text
from analysis.settings import Settings, resolve


def read_table(path: Path | str) -> pd.DataFrame:
    """Read one of our CSVs back with bool and text columns restored (CSV loses dtypes)."""
    df = pd.read_csv(path, dtype={"identity": str})  # a hex identity of digits only stays text
    for col in ("diverged", "changes_lr_meaning", "complete", "rank_shared", "never_learned"):
        if col in df and not pd.api.types.is_integer_dtype(df[col]):  # the leaderboard's diverged is a count
            df[col] = as_bool(df[col])
    for col in ("method", "size", "uses"):
        if col in df:
            df[col] = df[col].astype(str)
    for col in ("method_versions", "missing_sizes", "never_learned_sizes", "status", "eval_status", "eval_skipped",
                "identity", "source"):
        if col in df:
            df[col] = as_text(df[col])
    return df


def read_benchmark(path: Path | str) -> dict:
    return yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}


def settings_for(benchmark_yaml: str, runs: pd.DataFrame) -> Settings:
    return resolve(read_benchmark(benchmark_yaml), runs)


def aggregate(metrics: list[str], evals: list[str], benchmark_yaml: str, runs_csv: str,
              reference_rows: str | None = None) -> None:
    """runs.csv from the trained runs (and their eval records), and the rows of the runs taken
    from reference results (stabench.reference: rows as the reference computed them, l0 and
    effective loss recomputed with this benchmark's l0). Column source: trained or reference."""
    from analysis.probe_families import declared_families
    from analysis.run_stats import add_run_stats
    from analysis.runs import collect_runs, join_evals, load_history, with_effective_loss
    runs = collect_runs([Path(p) for p in metrics])
    if evals:
        runs = join_evals(runs, [Path(p) for p in evals])
    reference = read_table(reference_rows) if reference_rows else runs.iloc[:0]
    l0 = settings_for(benchmark_yaml, pd.concat([runs, reference], ignore_index=True)).l0
    runs = with_effective_loss(runs, l0)
    histories = {d: load_history(d) for d in runs["run_dir"] if (Path(d) / "history.csv").exists()}
    runs = add_run_stats(runs, histories, declared_families(runs["run_dir"])).assign(source="trained")
    if len(reference):
        reference = with_effective_loss(reference, l0).assign(source="reference")
        runs = pd.concat([runs, reference], ignore_index=True) if len(runs) else reference
        runs = runs.sort_values(["method", "size", "lr", "seed"], kind="stable").reset_index(drop=True)
    sources = {"metrics": list(map(str, metrics)), "evals": list(map(str, evals or [])),
               "benchmark_yaml": str(benchmark_yaml)}
    if reference_rows:
        sources["reference_rows"] = str(reference_rows)
    tables.write_runs_csv(runs_csv, runs, sources)


def cmd_aggregate(a: argparse.Namespace) -> None:
    aggregate(a.metrics, a.evals, a.benchmark_yaml, a.runs_csv, a.reference_rows)


def read_runs(path: Path | str) -> pd.DataFrame:
    """runs.csv, checked against its record first; rebuilt from its sources when it does not
    match (truncated, edited) or its inputs changed since, never used as it is."""
    problem = tables.problem(path)
    if problem is not None:
        src = tables.sources(path)
        if src is None or tables.missing_inputs(src):
            gone = f" ({', '.join(tables.missing_inputs(src)[:3])} gone)" if src else ""
            raise SystemExit(f"analysis: error: {path}: {problem}; cannot rebuild it here{gone}: run the "
                             "workflow (or python -m analysis aggregate) again")
        print(f"analysis: {path}: {problem}; rebuilt from its {len(src['metrics'])} metrics files", file=sys.stderr)
        aggregate(src["metrics"], src["evals"], src["benchmark_yaml"], str(path), src.get("reference_rows"))
    return read_table(path)


def cmd_score(a: argparse.Namespace) -> None:
    from analysis.leaderboard import leaderboard
    from analysis.sensitivity import score
    runs = read_runs(a.runs_csv)
    settings = settings_for(a.benchmark_yaml, runs)
    scores, scored = score(runs, settings)
    write_dataframe_csv(a.scores_csv, scores)
    write_dataframe_csv(a.leaderboard_csv, leaderboard(scores, scored, settings, runs))


def cmd_claims(a: argparse.Namespace) -> None:
    from analysis.claim_stats import Context
    from analysis.claims import check, claims_table, load_claims
    from analysis.probe_families import declared_families
    runs = read_runs(a.runs_csv)
    settings = settings_for(a.benchmark_yaml, runs)
    families = declared_families(runs["run_dir"]) if "run_dir" in runs else {}
    ctx = Context.build(runs, settings, families)
    results = [check(c, ctx) for c in load_claims(a.claims_dir, settings.claims)]
    write_dataframe_csv(a.claims_csv, claims_table(results, settings.confidence))


def cmd_figures(a: argparse.Namespace) -> None:
    from analysis.plots import draw_all
    runs = read_runs(a.runs_csv)
    draw_all(runs, read_table(a.scores_csv), settings_for(a.benchmark_yaml, runs), Path(a.outdir))


def _read_json(path: str | None) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8")) if path else {}


def cmd_report(a: argparse.Namespace) -> None:
    from analysis.report import build_report
    runs = read_runs(a.runs_csv)
    benchmark = read_benchmark(a.benchmark_yaml)
    settings = resolve(benchmark, runs)
    figdir = Path(a.figures_dir)
    figs = {k: figdir / catalog.figure_file(k) for k in catalog.FIGURES if (figdir / catalog.figure_file(k)).exists()}
    tables = {k: pd.read_csv(figdir / catalog.table_file(k)) for k in catalog.TABLES
              if (figdir / catalog.table_file(k)).exists() and (figdir / catalog.table_file(k)).stat().st_size > 1}
    from analysis.jobs import job_costs
    build_report(Path(a.out), benchmark_name=str(benchmark.get("name") or Path(a.benchmark_yaml).stem),
                 settings=settings, leaderboard_df=read_table(a.leaderboard_csv), runs_df=runs,
                 costs=job_costs(a.job_times or []),
                 claims_df=pd.read_csv(a.claims_csv), figure_pngs=figs, tables=tables, captions_dir=a.captions_dir,
                 method_docs=_read_json(a.method_docs), benchmark=benchmark, provenance=_read_json(a.provenance),
                 reference=_read_json(a.reference_results) or None)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m analysis",
                                description="stabench analysis: aggregate, score, claims, figures, report")
    sub = p.add_subparsers(dest="cmd", required=True)
    bench = {"required": True, "help": "the resolved benchmark (results/<bench>/benchmark.yaml)"}

    s = sub.add_parser("aggregate", help="metrics.json files (+ histories) -> runs.csv")
    s.add_argument("--metrics", nargs="*", default=[], required=True, help="metrics.json paths")
    s.add_argument("--evals", nargs="*", default=[],
                   help="zero-shot eval records (stabench eval) to join as eval/<task>/<metric> columns")
    s.add_argument("--benchmark-yaml", **bench)
    s.add_argument("--reference-rows",
                   help="rows of runs taken from reference results (the workflow's reference_runs.csv)")
    s.add_argument("--runs-csv", required=True)
    s.set_defaults(func=cmd_aggregate)

    s = sub.add_parser("score", help="runs.csv -> scores.csv (per method, size) + leaderboard.csv")
    s.add_argument("--runs-csv", required=True)
    s.add_argument("--benchmark-yaml", **bench)
    s.add_argument("--scores-csv", required=True)
    s.add_argument("--leaderboard-csv", required=True)
    s.set_defaults(func=cmd_score)

    s = sub.add_parser("claims", help="runs.csv + claim files -> claims.csv")
    s.add_argument("--runs-csv", required=True)
    s.add_argument("--benchmark-yaml", **bench)
    s.add_argument("--claims-dir", required=True, nargs="+",
                   help="folder(s) of claim YAML files (claims/); a file name's first one wins")
    s.add_argument("--claims-csv", required=True)
    s.set_defaults(func=cmd_claims)

    s = sub.add_parser("figures", help="runs.csv + scores.csv -> PNGs and tables in --outdir")
    s.add_argument("--runs-csv", required=True)
    s.add_argument("--scores-csv", required=True)
    s.add_argument("--benchmark-yaml", **bench)
    s.add_argument("--outdir", required=True)
    s.set_defaults(func=cmd_figures)

    s = sub.add_parser("report", help="leaderboard, claims, runs, figures -> self-contained report.html")
    s.add_argument("--leaderboard-csv", required=True)
    s.add_argument("--runs-csv", required=True)
    s.add_argument("--claims-csv", required=True)
    s.add_argument("--figures-dir", required=True)
    s.add_argument("--captions-dir", help="folder of <figure>.rst captions (workflow/report/figures)")
    s.add_argument("--benchmark-yaml", **bench)
    s.add_argument("--method-docs", help="JSON file: {method label: docstring}")
    s.add_argument("--provenance", help="JSON file: {key: value} (versions, git commit, date)")
    s.add_argument("--job-times", nargs="*", help="Snakemake benchmark files of the train and eval jobs")
    s.add_argument("--reference-results",
                   help="JSON file: where the runs taken from reference results came from (the workflow's reference.json)")
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_report)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.func(args)
    return 0
