"""Load and validate the benchmark and --config, and expand the grid of runs.

Every bad input stops the workflow here, before any job, with stabench's one-line message;
names that become folders are slugs, so every path below lies under results/<benchmark>/.
"""

import json
import sys
from pathlib import Path

import yaml
from snakemake.exceptions import WorkflowError
from snakemake.logging import logger
from snakemake.settings.types import DeploymentMethod

from stabench import paths
from stabench.benchmark import load_for_use
from stabench.config import ConfigError, inside, method_specs, resolve_benchmark_path, slug_pattern, workflow_settings
from stabench.methods import MethodError, load_stack
from stabench.reference import load_reference, pairs_from_reference
from stabench.resources import pack_pays
from stabench.eta import TimeLeftHandler
from stabench.runspec import resolve_run, write_spec

# After each "N of M steps done" line, the time left, estimated from the jobs measured so far
# (stabench/eta.py); not when the progress lines are silenced (--quiet progress or all).
_QUIET = {str(q).lower().rsplit(".", 1)[-1] for q in (getattr(workflow.output_settings, "quiet", None) or ())}
if not _QUIET & {"progress", "all"}:
    TimeLeftHandler.attach(logger)

# The jobs read the benchmark as the user named it (a param, not an input file): editing the file
# in place (adding a method) retrains exactly the runs whose identity (their own param) changes.
BENCHMARK_ARG = str(config.get("benchmark", "cpu"))
try:
    SETTINGS = workflow_settings(config)  # --config keys and values
    BENCHMARK_FILE = resolve_benchmark_path(SETTINGS["benchmark"])
    # Validated once, by stabench against benchmarks/schema.yaml (defaults filled): it names the
    # field and what is allowed in one line.
    BENCHMARK = load_for_use(BENCHMARK_FILE)
    STACKS = {label: load_stack(spec["use"], spec["args"]) for label, spec in method_specs(BENCHMARK).items()}
    # Folder label -> the exact LR of the benchmark file (labels never lose digits).
    LR_OF = paths.lr_labels(BENCHMARK["learning_rates"])
except (ConfigError, MethodError) as exc:
    raise WorkflowError(str(exc)) from None

NAME = BENCHMARK["name"]
RESULTS = str(paths.results_dir(BENCHMARK))
ENV = "../envs/stabench.yaml"  # every rule's software environment (relative to workflow/rules/)
CONDA = DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method
# The Python of the jobs. Under --sdm conda a job runs in the rule's conda environment (ENV), so
# the command is that environment's own `python`; otherwise the full path of the Python that runs
# Snakemake, so a job uses the workflow's environment whatever comes first on PATH. (--sdm
# apptainer alone changes nothing: no rule has a container, docs/cluster.md says why.)
PYTHON = "python" if CONDA else sys.executable
# ENV installs stabench from the folder two levels above it (pip `-e ../..`): a clone. A workflow
# shipped inside an installed package has no project there, so that environment cannot be built.
ENV_PROJECT = ((Path(workflow.current_basedir) / ENV).parent / "../..").resolve()
if CONDA and not (ENV_PROJECT / "pyproject.toml").is_file():
    raise WorkflowError(f"--sdm conda: {ENV} installs stabench from {ENV_PROJECT} (pip -e ../..), which is an "
                        "installed package, not a clone of the repository; run from a clone, or without --sdm conda "
                        "(the jobs then use this Python, which has stabench)")
METHODS = list(method_specs(BENCHMARK))
SIZES = list(BENCHMARK["sizes"])
LRS = list(LR_OF)
SEEDS = [str(s) for s in BENCHMARK["seeds"]]
TRAIN_THREADS = SETTINGS["train_threads"]
# GPUs: --config gpus=N (GPUs on this machine, or per SLURM job) runs_per_gpu=K (small runs sharing one).
GPUS = SETTINGS["gpus"]
RUNS_PER_GPU = SETTINGS["runs_per_gpu"]
# Ensembles: --config pack=auto (the default) trains each seed's LR sweep of a (method, size) as
# one job (its runs share their batches) where packing pays: every size on a CPU, on a GPU the
# sizes whose step is small enough (stabench.resources.pack_pays, from measured speed-ups), and
# the others one job per run. pack=1 packs every size that way, pack=all every run of a
# (method, size) in one job, pack=0 one job per run.
PACK = SETTINGS["pack"]  # 0, 1, "all" or "auto"
PACKED_SIZES = [s for s in SIZES if PACK in (1, "all") or (PACK == "auto" and pack_pays(BENCHMARK, s, gpus=GPUS))]
SINGLE_SIZES = [s for s in SIZES if s not in PACKED_SIZES]
PACK_SEED = None if PACK == "all" else "{seed}"  # an ensemble job: one seed's sweep, or all seeds
PACK_JOB = "pack" if PACK == "all" else "s{seed}"


def size_gpus(size):
    """GPUs one run of this size uses (0 on CPU); sizes may ask for several (DDP)."""
    return BENCHMARK["sizes"][size].get("gpus", 1) if GPUS else 0


def gpu_slots(size):
    """Lock-pool slots a run holds: one slot of a shared GPU, or all slots of whole GPUs."""
    n = size_gpus(size)
    return 0 if n == 0 else (1 if n == 1 else n * RUNS_PER_GPU)


def gpu_args(wildcards):
    n = size_gpus(wildcards.size)
    return f"--gpus {n} --runs-per-gpu {RUNS_PER_GPU}" if n else ""


SLUG = slug_pattern().strip("^$")  # the schema's folder-name rule, for the wildcards too

wildcard_constraints:
    method=SLUG,
    size=SLUG,
    lr=SLUG,
    seed=r"\d+",


DATA_DIR = str(paths.data_dir(RESULTS))


def run_dir(method, size, lr, seed):
    """A run's folder (stabench.paths.run_dir); wildcards such as '{lr}' pass through."""
    return str(inside(paths.run_dir(RESULTS, method, size, lr, seed), RESULTS))


# The same as wildcard patterns for the rules: a run's folder, and its place under logs/ and benchmarks/.
RUN_DIR = run_dir("{method}", "{size}", "{lr}", "{seed}")
RUN_NAME = paths.run_name("{method}", "{size}", "{lr}", "{seed}")


def run_files(method, size, seed, name):
    """One file of every run of an ensemble job: one seed's LR sweep of a (method, size), or
    with ``seed`` None (pack=all) all of its runs. Wildcard patterns where given as such."""
    seeds = SEEDS if seed is None else [seed]
    return [f"{run_dir(method, size, lr, s)}/{name}" for s in seeds for lr in LRS]


def pack_runs(wildcards):
    """(lr, seed) labels of an ensemble job's runs."""
    seeds = SEEDS if PACK == "all" else [wildcards.seed]
    return [(lr, seed) for seed in seeds for lr in LRS]


def runs_of(method, size):
    return [run_dir(method, size, lr, seed) for lr in LRS for seed in SEEDS]


def job_times():
    """The benchmark files of every train and eval job (Snakemake's wall time and peak memory)."""
    packs = [f"{RESULTS}/benchmarks/train/{m}/{s}/{PACK_JOB.format(seed=seed)}.tsv"
             for m in METHODS for s in PACKED_SIZES for seed in (SEEDS[:1] if PACK == "all" else SEEDS)
             if (m, s) not in FROM_REFERENCE]
    single = [f"{RESULTS}/benchmarks/train/{paths.run_name(m, s, lr, seed)}.tsv"
              for m in METHODS for s in SINGLE_SIZES for lr in LRS for seed in SEEDS if (m, s) not in FROM_REFERENCE]
    train = packs + single
    evals = {"best": [f"{RESULTS}/benchmarks/eval/{m}/{s}.tsv" for m in METHODS for s in SIZES
                      if (m, s) not in FROM_REFERENCE],
             "all": [f"{RESULTS}/benchmarks/eval/{paths.run_name(m, s, lr, seed)}.tsv"
                     for m in METHODS for s in SIZES for lr in LRS for seed in SEEDS if (m, s) not in FROM_REFERENCE],
             "none": []}[BENCHMARK["eval"]["runs"]]
    return train + evals


GRID = [(m, s, lr, seed) for m in METHODS for s in SIZES for lr in LRS for seed in SEEDS]


def world_size(size):
    """Processes one run of this size trains on: its GPUs when several (DDP), else one."""
    return max(size_gpus(size), 1)


def _specs():
    """Every run resolved now, once (stabench.runspec): the spec rule writes each as its
    folder's run.json, from which its train job builds it. A method whose arguments do not fit
    the benchmark (its configure hook refuses them) stops the workflow here, in one line."""
    try:
        return {run: resolve_run(BENCHMARK, method=run[0], size=run[1], lr=LR_OF[run[2]], seed=int(run[3]),
                                 world_size=world_size(run[1])) for run in GRID}
    except (ConfigError, MethodError) as exc:
        raise WorkflowError(str(exc)) from None


SPECS = _specs()


def spec_of(method, size, lr, seed):
    """The run's spec; its identity is the spec rule's params, so a change of what the run
    computes rewrites its run.json and retrains it, and nothing else does (another method, a
    new size that the run does not derive anything from)."""
    if (method, size, lr, seed) not in SPECS:
        raise WorkflowError(f"{run_dir(method, size, lr, seed)} is not a run of benchmark {NAME!r}")
    return SPECS[(method, size, lr, seed)]


def write_run_spec(wildcards, spec_path, log_path):
    """The run_spec job: the run's spec as its folder's run.json, and one line in its log."""
    spec = spec_of(wildcards.method, wildcards.size, wildcards.lr, wildcards.seed)
    path = write_spec(Path(spec_path).parent, spec, owner="workflow")
    Path(log_path).write_text(f"{path}: run {spec.identity}\n")


# Reference results (--config reference=<name or path>, stabench.reference): a (method, size)
# whose runs all have their identity (what they compute, not the benchmark's or method's name)
# in the reference's runs.csv, under the same eval settings, is taken from it: not trained, not
# evaluated; its rows join runs.csv (source: reference). Every other run trains as usual.
REFERENCE = None
FROM_REFERENCE = set()  # (method, size) pairs taken from the reference
if SETTINGS["reference"]:
    try:
        REFERENCE = load_reference(SETTINGS["reference"])
    except ConfigError as exc:
        raise WorkflowError(str(exc)) from None
    FROM_REFERENCE = pairs_from_reference(REFERENCE, {run: spec.identity for run, spec in SPECS.items()},
                                          BENCHMARK["eval"])
    if not REFERENCE.eval_matches(BENCHMARK["eval"]):
        logger.info(f"stabench: reference {REFERENCE.folder} not used: its zero-shot evaluation settings (eval:) "
                    "differ from this benchmark's")
    else:
        taken = ", ".join(f"{m} {s}" for m, s in sorted(FROM_REFERENCE)) or "none"
        logger.info(f"stabench: from the reference {REFERENCE.describe()}: {taken}; every other run trains here")
REFERENCE_RUNS = {run: SPECS[run].identity for run in GRID if run[:2] in FROM_REFERENCE}
TRAINED = [run for run in GRID if run[:2] not in FROM_REFERENCE]
ALL_METRICS = [f"{run_dir(*run)}/metrics.json" for run in TRAINED]  # the runs trained here
