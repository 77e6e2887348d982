"""What each job asks a cluster for, and which rules stay where Snakemake runs.

The estimates live in stabench/resources.py (pure functions of the benchmark, documented
there); the functions below hand them to the rules' ``resources:`` as Snakemake callables, so
the SLURM executor turns them into ``--time``, ``--mem``, ``--cpus-per-task`` and ``--gpus``.
A retry (``--retries``) gets ``attempt`` times the estimate. Local runs ignore runtime and
memory unless ``--resources mem_mb=N`` bounds them.

A GPU workflow (``--config gpus=N``) evaluates on a GPU too (unless ``eval.device: cpu``): one
GPU per evaluation, taken from the same lock pool as training on a local GPU box.
"""

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


def train_runtime(wildcards, attempt):
    return job_resources.train_runtime_min(BENCHMARK, wildcards.size, gpus=size_gpus(wildcards.size),
                                           threads=TRAIN_THREADS, attempt=attempt)


def train_mem(wildcards, attempt):
    return job_resources.train_mem_mb(BENCHMARK, wildcards.size, gpus=size_gpus(wildcards.size), attempt=attempt)


def pack_runtime(wildcards, attempt):
    return job_resources.train_runtime_min(BENCHMARK, wildcards.size, gpus=size_gpus(wildcards.size),
                                           threads=TRAIN_THREADS, members=PACK_MEMBERS, attempt=attempt)


def pack_mem(wildcards, attempt):
    return job_resources.train_mem_mb(BENCHMARK, wildcards.size, gpus=size_gpus(wildcards.size),
                                      members=PACK_MEMBERS, attempt=attempt)


def train_cpus(wildcards, threads):
    """A multi-GPU run starts one process per GPU, each with ``threads`` torch threads."""
    return threads * max(size_gpus(wildcards.size), 1)


def eval_runtime(wildcards, threads, attempt):
    return job_resources.eval_runtime_min(BENCHMARK, wildcards.size, gpu=EVAL_GPU, threads=threads, attempt=attempt)


def eval_mem(wildcards, attempt):
    return job_resources.eval_mem_mb(BENCHMARK, wildcards.size, gpu=EVAL_GPU, attempt=attempt)


EVAL_GPUS = 1 if EVAL_GPU else 0  # SLURM: --gpus=1; local: one slot of the lock pool
EVAL_GPU_ARGS = f"--gpus 1 --runs-per-gpu {RUNS_PER_GPU}" if EVAL_GPU else ""
