"""stabench analysis layer: runs -> LR sensitivity -> leaderboard -> figures -> HTML report.

Everything here is a pure function over pandas DataFrames (plus thin file I/O at the
edges), so the Snakemake rules stay one-liners (`python -m analysis <subcommand>`, see
`analysis/cli.py`) and the scoring can be unit-tested on hand-computed numbers.

Public API (import the submodules; figures pull in matplotlib, so they are not
imported here):
    runs.collect_runs, runs.load_history, runs.with_effective_loss
    sensitivity.score
    leaderboard.leaderboard
    figures.loss_vs_lr, figures.sensitivity_vs_size, figures.attn_logit_vs_lr,
    figures.loss_curves, figures.log_z_curves, figures.method_palette, figures.save_png
    report.build_report, report.choose_curve_runs
"""

from analysis.leaderboard import leaderboard
from analysis.runs import collect_runs, load_history, with_effective_loss
from analysis.sensitivity import score

__all__ = ["collect_runs", "load_history", "with_effective_loss", "score", "leaderboard"]
