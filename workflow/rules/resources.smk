"""What each job asks a cluster for, and which rules stay where Snakemake runs.

The estimates live in stabench/resources.py (pure functions of the benchmark, documented
there); the functions below hand them to the rules' ``resources:`` as Snakemake callables, so
the SLURM executor turns them into ``--time``, ``--mem``, ``--cpus-per-task`` and ``--gpus``.
A retry (``--retries``) gets ``attempt`` times the estimate. Local runs ignore runtime and
memory unless ``--resources mem_mb=N`` bounds them.

The job limit (``--config max_job_minutes=N``, default 1440): no request exceeds it. A train
job gets ``--stop-after-minutes`` (its request less a margin, stabench.resources.stop_after_min):
a run longer than that saves its checkpoint and the job exits 75; the train rules' ``retries``
(``chain_retries``: enough for the longest run of the rule, plus one) resubmit it, and the next
job resumes where it stopped. Runs of a (method, size) that finished before the workflow
started (their metrics.json) replace the FLOP estimate with their measured tokens/s.

A GPU workflow (``--config gpus=N``) evaluates on a GPU too (unless ``eval.device: cpu``): one
GPU per evaluation, taken from the same lock pool as training on a local GPU box.
"""

import functools
import glob
import json

from stabench import resources as job_resources

# The one list of rules that run where Snakemake runs (a cluster's login node): prepare_data may
# stream the corpus from the hub, which compute nodes often cannot reach; the others read or
# write a few files (run_spec: one run.json; the analysis rules: seconds to a minute of pandas
# and matplotlib, never worth a job).
localrules:
    run_spec,
    prepare_data,
    build_eval_tasks,
    describe,
    aggregate,
    score,
    claims,
    figures,
    report,


PACK_MEMBERS = len(LRS) * (len(SEEDS) if PACK == "all" else 1)  # runs per ensemble job
EVAL_GPU = GPUS > 0 and BENCHMARK["eval"]["device"] != "cpu"


JOB_LIMIT = SETTINGS["max_job_minutes"]


@functools.lru_cache(maxsize=None)
def measured_speed(method, size, members):
    """Tokens/s per member of this (method, size)'s runs that finished before the workflow
    started, trained as its jobs train (stabench.resources.measured_tokens_per_second), or None."""
    metrics = []
    for path in glob.glob(f"{run_dir(method, size, '*', '*')}/metrics.json"):
        try:
            metrics.append(json.loads(Path(path).read_text()))
        except (OSError, ValueError):
            pass  # a damaged file: the FLOP estimate instead
    like = spec_of(method, size, LRS[0], SEEDS[0]).to_dict()
    return job_resources.measured_tokens_per_second(metrics, like, gpus=size_gpus(size), members=members)


def runtime_min(method, size, members, attempt=1, limit=JOB_LIMIT):
    return job_resources.train_runtime_min(BENCHMARK, size, gpus=size_gpus(size), threads=TRAIN_THREADS,
                                           members=members, attempt=attempt, limit_min=limit,
                                           tokens_per_second=measured_speed(method, size, members))


def chain_retries(sizes, members):
    """The retries of a train rule: enough continuations for its longest run (uncapped estimate).
    Only where Snakemake schedules: the Snakemake inside a cluster job would otherwise retry a
    job that stopped at its deadline in the same cluster job (a rule's retries replace the
    --retries 0 that the executor gives it), past the job's time."""
    if not workflow.is_main_process:
        return 0
    longest = max((runtime_min(m, s, members, limit=None) for m in METHODS for s in sizes), default=0)
    return job_resources.chain_retries(longest, JOB_LIMIT)


def stop_after(wildcards, resources):
    """--stop-after-minutes of a train job: its request (at most the limit) less a margin."""
    return f"{job_resources.stop_after_min(resources.runtime, JOB_LIMIT):.4g}"


def train_runtime(wildcards, attempt):
    return runtime_min(wildcards.method, wildcards.size, 1, attempt)


def train_mem(wildcards, attempt):
    return job_resources.train_mem_mb(BENCHMARK, wildcards.size, gpus=size_gpus(wildcards.size), attempt=attempt)


def pack_runtime(wildcards, attempt):
    return runtime_min(wildcards.method, wildcards.size, PACK_MEMBERS, attempt)


def pack_mem(wildcards, attempt):
    return job_resources.train_mem_mb(BENCHMARK, wildcards.size, gpus=size_gpus(wildcards.size),
                                      members=PACK_MEMBERS, attempt=attempt)


def train_cpus(wildcards, threads):
    """A multi-GPU run starts one process per GPU, each with ``threads`` torch threads."""
    return threads * max(size_gpus(wildcards.size), 1)


def eval_runtime(wildcards, threads, attempt):
    return job_resources.eval_runtime_min(BENCHMARK, wildcards.size, gpu=EVAL_GPU, threads=threads, attempt=attempt,
                                          limit_min=JOB_LIMIT)


def eval_mem(wildcards, attempt):
    return job_resources.eval_mem_mb(BENCHMARK, wildcards.size, gpu=EVAL_GPU, attempt=attempt)


EVAL_GPUS = 1 if EVAL_GPU else 0  # SLURM: --gpus=1; local: one slot of the lock pool
EVAL_GPU_ARGS = f"--gpus 1 --runs-per-gpu {RUNS_PER_GPU}" if EVAL_GPU else ""
