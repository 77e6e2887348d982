"""Before any job: what lets one plain `snakemake --cores 2` finish a killed or damaged workflow.

- Jobs die with this process (stabench/lifeline.py): kill -9 of Snakemake leaves no training
  running alone; the run lock (stabench/runlock.py) stops any that would race a resumed job.
- No network unless the benchmark needs the hub (stabench/benchmark.py, stabench/offline.py); jobs
  inherit it.
- A lock left in .snakemake/locks by a killed Snakemake is removed when no other Snakemake
  runs in this folder; damaged result files are removed, and the analysis outputs when a run
  file is missing, each said (stabench/repair.py), so their jobs rebuild them. The profile's
  rerun-incomplete (profiles/default) reruns the jobs a kill interrupted.
Included last: it needs every rule's outputs.
"""

from stabench import lifeline, repair
from stabench.benchmark import network_for


def _say(line):
    print(f"stabench: {line}", file=sys.stderr)  # Snakemake's logger is not set up while it parses


lifeline.mark_workflow()
_NEEDS_HUB = network_for(BENCHMARK)
if _NEEDS_HUB:
    _say(f"online for {', '.join(_NEEDS_HUB)}")

for _path in [*ALL_METRICS, *EVALS]:
    inside(_path, RESULTS)

_DRYRUN = workflow.output_settings.dryrun
if not (workflow.remote_exec or workflow.subprocess_exec):  # the main process, not a job's
    for _line in repair.stale_lock(".snakemake", dryrun=_DRYRUN):
        _say(_line)
    if not repair.snakemakes_here():  # else leave its files alone (Snakemake refuses to start anyway)
        _SLOTS = {run_dir(*run): {"benchmark": NAME, "method": run[0], "size": run[1], "lr": LR_OF[run[2]],
                                  "seed": int(run[3])} for run in TRAINED}  # not those from a reference
        _ANALYSIS = [str(f) for r in (rules.aggregate, rules.score, rules.figures, rules.describe, rules.report)
                     for f in r.output] + [f"{RESULTS}/runs.csv.json"]  # runs.csv's record (analysis/tables.py)
        for _line in repair.repair(_SLOTS, EVALS, _ANALYSIS, [rules.build_eval_tasks.output.manifest],
                                   DATA_DIR, dryrun=_DRYRUN, data_cfg=BENCHMARK["data"]):
            _say(_line)
