"""Write every figure and table of analysis/catalog.py for one benchmark (`python -m analysis figures`).

Chooses what each figure shows (the curve runs, the LR of the probe panels) from the runs,
the scores and the benchmark's settings, and writes every catalogued file even when there is
nothing to draw (Snakemake needs every declared output): an empty figure then says why, and
the report shows that sentence instead of the picture. A
figure that fails to draw is replaced by one that names the error, so one bad panel never
costs the report.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pandas as pd

from stabench.io import write_dataframe_csv
from analysis import catalog
from analysis import diagnostics as D
from analysis import figures as F
from analysis.predict import ATTN_LOGIT_DANGER, extrapolate_attention, grad_rms_fits, holdout_attention
from analysis.probe_families import declared_families
from analysis.runs import load_history, size_order, size_params
from analysis.settings import Settings

CURVE_COLUMNS = ("loss", "log_z_mean")  # engine history columns drawn over training


def curve_runs(runs: pd.DataFrame, scores: pd.DataFrame, histories: dict) -> pd.DataFrame:
    """History rows of each method's best-LR cell and highest-LR cell at every size, all seeds
    (columns method, size, which, seed, step, diverged_at and CURVE_COLUMNS). diverged_at is
    the step a diverged run diverged at (NaN otherwise); a diverged run without history keeps
    one row, so its x is still drawn."""
    best = scores.set_index(["method", "size"])["best_lr"].to_dict() if not scores.empty else {}
    parts = []
    for (method, size), g in runs.groupby(["method", "size"]):
        lr_best = best.get((method, size), math.nan)
        for which, lr in (("best LR", lr_best), ("highest LR", g["lr"].max())):
            for r in g[g["lr"] == lr].itertuples():
                h = histories.get(r.run_dir, pd.DataFrame(columns=["step"]))
                at = diverged_step(r, h)
                if h.empty and math.isnan(at):
                    continue
                cols = [c for c in CURVE_COLUMNS if c in h]
                part = h[["step", *cols]] if not h.empty else pd.DataFrame({"step": [at]})
                parts.append(part.assign(method=method, size=size, which=which, seed=r.seed, diverged_at=at))
    return (pd.concat(parts, ignore_index=True) if parts
            else pd.DataFrame(columns=["method", "size", "which", "seed", "step", "diverged_at"]))


def diverged_step(run, history: pd.DataFrame) -> float:
    """The step a diverged run diverged at (its last recorded step when metrics.json has none,
    0 without history); NaN for a run that did not diverge."""
    if not bool(getattr(run, "diverged", False)):
        return math.nan
    at = getattr(run, "diverged_at_step", math.nan)
    if at is not None and not pd.isna(at):
        return float(at)
    return float(history["step"].max()) if not history.empty else 0.0


def spike_steps(runs: pd.DataFrame) -> dict[str, list]:
    out = {}
    for d in runs["run_dir"]:
        path = Path(d) / "metrics.json"
        if path.exists():
            out[d] = list(json.loads(path.read_text(encoding="utf-8")).get("loss_spike_steps") or [])
    return out


def prediction_table(runs: pd.DataFrame, sizes) -> pd.DataFrame:
    """Per method and LR: the held-out check (calibrated level) beside the extrapolations."""
    parts = []
    for method in sorted(set(runs["method"])):
        held, ext = holdout_attention(runs, method, "calibrate", sizes), extrapolate_attention(runs, method, sizes)
        if ext.empty:
            continue
        parts.append(ext.merge(held, on=["method", "lr"], how="left") if not held.empty else ext)
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def draw_one(name: str, make, out: Path) -> bool:
    """Draw figure ``name`` with ``make()`` and save it into folder out (PNG and SVG), a panel
    without data saying so; when drawing fails, a placeholder that says why is saved instead
    and one line goes to stderr (a report for any outcome). True when the figure itself was drawn."""
    title = catalog.FIGURES[name][0]
    png, svg = out / catalog.figure_file(name), out / catalog.svg_file(name)
    try:
        fig = make()
        F.blank_empty_panels(fig)
        F.save_figure(fig, png, svg)
        return True
    except Exception as exc:  # noqa: BLE001 -- any failure of one figure must leave the others and the report
        F.plt.close("all")
        why = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
        print(f"figure {name} could not be drawn ({why}); a placeholder is written instead", file=sys.stderr)
        F.save_figure(F.empty_figure(title, f"this figure could not be drawn: {why}"), png, svg)
        return False


def draw_all(runs: pd.DataFrame, scores: pd.DataFrame, settings: Settings, out: Path) -> None:
    if runs.empty:
        makers = {name: (lambda title=title: F.empty_figure(title, "no runs"))
                  for name, (title, _) in catalog.FIGURES.items()}
        tables = {name: pd.DataFrame() for name in catalog.TABLES}
    else:
        sizes = size_order(runs, settings.sizes)
        palette, params = F.method_palette(runs["method"]), size_params(runs)
        band = F.seed_band(settings.resamples, settings.seed, settings.confidence)
        histories = {d: load_history(d) for d in runs["run_dir"] if (Path(d) / "history.csv").exists()}
        families = declared_families(runs["run_dir"])
        largest = sizes[-1]
        lr = D.chosen_lr(runs, largest, settings.reference)
        curves = curve_runs(runs, scores, histories)
        makers = {
            "loss_vs_lr": lambda: F.loss_vs_lr(runs, sizes, palette, params, settings.l0, band),
            "scores_vs_size": lambda: F.scores_vs_size(scores, palette, params),
            "attn_logit_vs_lr": lambda: F.attn_logit_vs_lr(runs, sizes, palette, params, band,
                                                           danger=ATTN_LOGIT_DANGER),
            # a display choice: a diverging run shows its climb without flattening the others
            "loss_curves": lambda: F.training_curves(curves, "loss", f"training loss ({F.LOSS_UNIT})", palette,
                                                     band, clip=1.5 * settings.l0, mark_at=settings.l0),
            "log_z": lambda: F.training_curves(curves, "log_z_mean", "mean log Z of the output logits", palette, band),
            "instability_prediction": lambda: D.instability_figure(runs, sizes),
            "grad_rms_vs_size": lambda: D.grad_rms_figure(runs, sizes, lr),
            "probes": lambda: D.probe_panels(runs, histories, families, largest, lr, palette, band),
            "spikes": lambda: D.spikes_figure(runs, histories, families, spike_steps(runs)),
        }
        tables = {"instability_prediction": prediction_table(runs, sizes), "grad_rms_fits": grad_rms_fits(runs, sizes)}
    for name in catalog.FIGURES:
        draw_one(name, makers[name], out)
    for name in catalog.TABLES:
        write_dataframe_csv(out / catalog.table_file(name), tables[name])
