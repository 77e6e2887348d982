"""stabench workflow: a benchmark file becomes a grid of runs, a leaderboard and a report.

    snakemake --cores 2                              # the default benchmark (cpu)
    snakemake --cores 2 --config benchmark=smoke     # any benchmarks/<name>.yaml, or a path
    snakemake --cores 2 --config benchmark=mine reference=cpu   # take the runs reference/cpu/ has, train the rest

Rules live in workflow/rules/; every arrow of the flow (docs/architecture.md) is a rule, so a rerun does
only what changed and a new method trains only its own runs.
"""

from snakemake.utils import min_version

min_version("9.0")


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/resources.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/eval.smk"
include: "workflow/rules/analysis.smk"
include: "workflow/rules/repair.smk"


rule all:
    input:
        f"{RESULTS}/leaderboard.csv",
        f"{RESULTS}/report.html",
    default_target: True
