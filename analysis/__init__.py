"""stabench analysis layer: runs -> scores with intervals -> ranks -> claims -> figures -> report.

Everything here is a pure function over pandas DataFrames (plus thin file I/O at the edges),
so the Snakemake rules stay one-liners (`python -m analysis <subcommand>`, analysis/cli.py)
and every number can be unit-tested on hand-built tables. One module, one job:

    settings        l0, reference method, margins, bootstrap settings of a benchmark
    runs            metrics.json -> runs table; the effective loss
    run_stats       per-run numbers from history.csv (log Z divergence, early logit, probe peaks)
    probe_families  the probe families the runs declare
    bootstrap       the shared, paired bootstrap over seeds
    statistics      LR sensitivity, best loss, best LR, ... on LR cells
    sensitivity     scores.csv: scores per (method, size) with intervals and ranks
    ranking         shared ranks and the never-learned rule
    leaderboard     leaderboard.csv
    claim_stats     the statistics claims are tested on; claim_checks: the four tests and
                    their verdicts; claims: claim files -> verdicts -> claims.csv
    predict         instability prediction (attention logits, gradient RMS vs eps)
    figures, diagnostics, plots   seaborn figures and the `figures` step
    catalog         figure and table names; report: the Jinja2 report

The analysis names no method: methods are named by the claim files (claims/) and the
benchmark's ``reference``.
"""
