"""The SLURM profile: what each job asks for (dry run, no SLURM needed) and the smoke benchmark
end to end through a real single-node SLURM (scripts/slurm/setup.sh), every train and eval
job an sbatch job.

The end-to-end test installs and starts SLURM, so it needs root and apt-get (or SLURM already
installed by setup.sh); elsewhere it is skipped and says why. It takes about 4 minutes on 2
cores, most of it the plugin's 40 s wait before its first status check of each wave of jobs.
The job-limit test on the same cluster chains a run over 2-4 SLURM jobs: about 3-6 minutes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
PROFILE = REPO / "profiles" / "slurm"
SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--profile", str(PROFILE)]
HEAVY_RULES = {"train", "train_pack", "evaluate", "eval_run"}
LOCAL_RULES = {"prepare_data", "build_eval_tasks", "aggregate", "score", "figures", "describe", "report"}


def env_with_repo() -> dict:
    """Jobs run ``python -m stabench``: make them import this checkout's packages."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}


def env_for_dry_runs(tmp_path: Path) -> dict:
    """env_with_repo, and an ``scontrol`` that fails at once first on the PATH: the plugin asks
    ``scontrol show config`` when it loads, which waits 9 s where SLURM's tools are installed
    but no controller answers (tests/test_workflow.py does the same)."""
    shim = tmp_path / "bin"
    shim.mkdir(exist_ok=True)
    (shim / "scontrol").write_text("#!/bin/sh\necho 'no SLURM controller in a dry run' >&2\nexit 1\n")
    (shim / "scontrol").chmod(0o755)
    env = env_with_repo()
    return {**env, "PATH": f"{shim}{os.pathsep}{env.get('PATH', '')}"}


def dry_run_jobs(workdir: Path, *config: str) -> list[dict]:
    """``snakemake -n`` through the SLURM profile, as one dict per job: rule, wildcards,
    resources, and its shell command."""
    proc = subprocess.run([*SNAKEMAKE, "-n", "--directory", str(workdir), "--config", *config],
                          capture_output=True, text=True, timeout=300, env=env_for_dry_runs(workdir))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    jobs = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", proc.stdout + proc.stderr):
        head = re.match(r"(?:local)?rule (\w+):", block)
        if not head:
            continue
        fields = dict(re.findall(r"^\s+(wildcards|resources): (.*)$", block, re.M))
        shell = re.search(r"^Shell command: (.*)$", block, re.M)
        jobs.append({"rule": head.group(1),
                     "wildcards": dict(kv.split("=", 1) for kv in fields.get("wildcards", "").split(", ") if kv),
                     "resources": dict(kv.split("=", 1) for kv in fields.get("resources", "").split(", ") if kv),
                     "shell": shell.group(1) if shell else ""})
    return jobs


def per_size(jobs: list[dict], rule: str, key: str) -> dict[str, str]:
    """size -> the one value of resource ``key`` every ``rule`` job of that size asks for."""
    values: dict[str, set] = {}
    for job in jobs:
        if job["rule"] == rule:
            values.setdefault(job["wildcards"]["size"], set()).add(job["resources"].get(key))
    assert all(len(v) == 1 for v in values.values()), f"{rule} {key} varies within a size: {values}"
    return {size: v.pop() for size, v in values.items()}


def test_wortsman_dry_run_sizes_jobs_to_fit(tmp_path):
    """Train jobs ask for time and memory that grow with the size (the estimate of
    stabench/resources.py), multi-GPU sizes for their GPUs; GPU evaluations get a GPU and
    memory for their model."""
    from stabench import resources
    from stabench.config import load_benchmark

    bench = load_benchmark("wortsman")
    sizes = list(bench["sizes"])
    # a job per run; a limit above every estimate, so that each size asks its own estimate
    # (test_no_job_asks_more_than_the_job_limit: the default limit)
    unlimited = "max_job_minutes=1000000"
    jobs = dry_run_jobs(tmp_path, "benchmark=wortsman", "gpus=1", "pack=0", unlimited)

    runtime = {s: int(v) for s, v in per_size(jobs, "train", "runtime").items()}
    mem = {s: int(v) for s, v in per_size(jobs, "train", "mem_mb").items()}
    gpus = {s: int(v) for s, v in per_size(jobs, "train", "gpu").items()}
    assert set(runtime) == set(sizes)
    assert gpus == {s: bench["sizes"][s].get("gpus", 1) for s in sizes}
    assert [mem[s] for s in sizes] == sorted(mem[s] for s in sizes) and len(set(mem.values())) > len(sizes) // 2
    one_gpu = [s for s in sizes if gpus[s] == 1]  # more GPUs per run shorten the wall time
    assert all(runtime[a] < runtime[b] for a, b in zip(one_gpu, one_gpu[1:])), runtime
    for s in sizes:  # the workflow asks exactly what the documented estimate says
        assert runtime[s] == resources.train_runtime_min(bench, s, gpus=gpus[s])
        assert mem[s] == resources.train_mem_mb(bench, s, gpus=gpus[s])

    evals = [j for j in jobs if j["rule"] == "evaluate"]
    assert len(evals) == len(bench["methods"]) * len(sizes)
    assert all(j["resources"]["gpu"] == "1" for j in evals)
    eval_mem = {s: int(v) for s, v in per_size(jobs, "evaluate", "mem_mb").items()}
    assert eval_mem[sizes[-1]] > 4 * eval_mem[sizes[0]]  # a 1.6 B model's checkpoint vs a 3 M one's
    # the default (pack=auto) on a GPU: these sizes' steps are too large for a pack to pay
    # (stabench.resources.pack_pays), so one job per run, as with pack=0
    auto = dry_run_jobs(tmp_path, "benchmark=wortsman", "gpus=1", unlimited)
    assert not [j for j in auto if j["rule"] == "train_pack"]
    assert {s: int(v) for s, v in per_size(auto, "train", "runtime").items()} == runtime
    # pack=1, one job per seed's LR sweep of a (method, size): it asks for all its runs' time
    packs = dry_run_jobs(tmp_path, "benchmark=wortsman", "gpus=1", "pack=1", unlimited)
    pack_runtime = {s: int(v) for s, v in per_size(packs, "train_pack", "runtime").items()}
    assert set(pack_runtime) == set(sizes) and all(pack_runtime[s] > runtime[s] for s in sizes)


def test_no_job_asks_more_than_the_job_limit(tmp_path):
    """The issue's command asked up to 3314 minutes of one job (23176 with pack=1). With the
    job limit (default 1440, --config max_job_minutes) no job asks more, and every train job
    is told to stop its runs at a checkpoint before its time is up (--stop-after-minutes)."""
    from stabench import resources
    from stabench.config import load_benchmark

    bench = load_benchmark("wortsman")
    for config, limit in ((["benchmark=wortsman", "gpus=1"], 1440),
                          (["benchmark=wortsman", "gpus=1", "pack=1", "max_job_minutes=600"], 600)):
        jobs = dry_run_jobs(tmp_path, *config)
        asked = {j["rule"]: 0 for j in jobs if "runtime" in j["resources"]}
        for job in jobs:
            if "runtime" in job["resources"]:
                asked[job["rule"]] = max(asked[job["rule"]], int(job["resources"]["runtime"]))
        assert max(asked.values()) == limit and all(v <= limit for v in asked.values()), (config, asked)
        train = [j for j in jobs if j["rule"] in ("train", "train_pack")]
        assert train and all(
            f"--stop-after-minutes {resources.stop_after_min(int(j['resources']['runtime']), limit):.4g} " in j["shell"]
            for j in train), train[0]["shell"]
    # a retry asks no more than the limit either (the attempt multiplier comes first)
    size = list(bench["sizes"])[-1]
    assert resources.train_runtime_min(bench, size, gpus=8, attempt=2, limit_min=1440) == 1440


def test_sizes_can_override_the_estimate(tmp_path):
    bench = yaml.safe_load((REPO / "benchmarks" / "smoke.yaml").read_text())
    bench["sizes"]["t32"].update(runtime_min=77, mem_mb=3300)
    path = tmp_path / "override.yaml"
    path.write_text(yaml.safe_dump(bench))
    jobs = dry_run_jobs(tmp_path, f"benchmark={path}", "pack=0")
    assert per_size(jobs, "train", "runtime")["t32"] == "77" and per_size(jobs, "train", "mem_mb")["t32"] == "3300"
    assert per_size(jobs, "train", "runtime")["t16"] != "77"
    assert all(j["resources"].get("gpu") == "0" for j in jobs if j["rule"] == "evaluate")  # a CPU workflow
    # a cluster request is no part of the experiment: the model a run builds (its identity) is unchanged
    from stabench.config import load_benchmark, size_config
    assert size_config(load_benchmark(path), "t32") == size_config(load_benchmark("smoke"), "t32")


def test_cheap_rules_are_local_rules(tmp_path):
    """prepare_data (may need the network), task building and the analysis run where
    Snakemake runs; training and evaluation are cluster jobs. A dry run prints every job as
    local, so this reads the workflow's localrules through Snakemake's API."""
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings

    with SnakemakeApi(OutputSettings(quiet={"all"})) as api:
        workflow_api = api.workflow(resource_settings=ResourceSettings(cores=1),
                                    config_settings=ConfigSettings(config={"benchmark": "smoke"}),
                                    snakefile=REPO / "Snakefile", workdir=tmp_path)
        workflow = workflow_api._workflow  # no public accessor for the localrules directive
        rules = {rule.name for rule in workflow.rules}
        local = set(workflow._localrules)
    assert LOCAL_RULES <= local, f"not local: {LOCAL_RULES - local}"
    assert not (local & HEAVY_RULES), f"cluster rules marked local: {local & HEAVY_RULES}"
    assert local <= rules, f"localrules names rules that do not exist: {local - rules}"


def test_train_rules_retry_enough_times_to_chain_their_longest_run(tmp_path):
    """A run longer than the limit continues job after job: the train rules' retries (Snakemake
    resubmits a failed job with attempt + 1) cover its longest run. Read through Snakemake's API."""
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings

    from stabench import resources
    from stabench.config import load_benchmark

    bench = load_benchmark("wortsman")
    with SnakemakeApi(OutputSettings(quiet={"all"})) as api:
        workflow_api = api.workflow(resource_settings=ResourceSettings(cores=1),
                                    config_settings=ConfigSettings(config={"benchmark": "wortsman", "gpus": 1,
                                                                           "pack": 1}),
                                    snakefile=REPO / "Snakefile", workdir=tmp_path)
        retries = {rule.name: rule._restart_times for rule in workflow_api._workflow.rules}  # the directive
    members = len(bench["learning_rates"])
    longest = max(resources.train_runtime_min(bench, s, gpus=bench["sizes"][s].get("gpus", 1), members=members)
                  for s in bench["sizes"])
    assert longest == 23176  # the largest request (d1024, a pack of 7 LRs)
    assert retries["train_pack"] == resources.chain_retries(longest, 1440) == 18


# -- end to end through a real SLURM --------------------------------------------------------------

def slurm_unavailable() -> str | None:
    """Why this machine cannot run the single-node SLURM of scripts/slurm/setup.sh, or None."""
    if os.geteuid() != 0:
        return "needs root to install and start SLURM (scripts/slurm/setup.sh)"
    if shutil.which("slurmctld") and shutil.which("slurmd"):
        return None
    if not (shutil.which("apt-get") and shutil.which("dpkg")):
        return "SLURM is not installed and there is no apt-get/dpkg to install slurm-wlm and munge"
    return None


@pytest.fixture(scope="session")
def slurm_cluster():
    """A single-node SLURM for the session: setup.sh, then stop.sh for the daemons it started."""
    reason = slurm_unavailable()
    if reason:
        pytest.skip(reason)
    setup = subprocess.run([str(REPO / "scripts" / "slurm" / "setup.sh")], capture_output=True, text=True,
                           timeout=900)
    print(setup.stdout, setup.stderr)
    assert setup.returncode == 0, f"scripts/slurm/setup.sh failed:\n{setup.stdout}\n{setup.stderr}"
    config = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, check=True).stdout
    jobcomp = Path(re.search(r"^JobCompLoc\s*=\s*(\S+)", config, re.M).group(1))
    try:
        yield jobcomp
    finally:
        subprocess.run([str(REPO / "scripts" / "slurm" / "stop.sh")], timeout=120)


@pytest.mark.timeout(1500)
def test_smoke_benchmark_through_slurm(slurm_cluster, tmp_path):
    """`snakemake --profile profiles/slurm --config benchmark=smoke`, nothing else: a finished
    leaderboard and report, every train and eval job a SLURM job that SLURM itself recorded as
    completed, and the cheap rules run locally."""
    proc = subprocess.run([*SNAKEMAKE, "--directory", str(tmp_path), "--config", "benchmark=smoke"],
                          capture_output=True, text=True, timeout=1200, env=env_with_repo())
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-6000:]
    results = tmp_path / "results" / "smoke"
    assert (results / "leaderboard.csv").stat().st_size > 0 and (results / "report.html").stat().st_size > 0

    # Snakemake job id -> rule, and Snakemake job id -> SLURM job id (the plugin's log lines)
    rule_of = {int(j): rule for j, rule in re.findall(r"Finished jobid: (\d+) \(Rule: (\w+)\)", log)}
    submitted = {int(j): int(s) for j, s in re.findall(r"Job (\d+) has been submitted with SLURM jobid (\d+)", log)}
    heavy = {j for j, rule in rule_of.items() if rule in HEAVY_RULES}
    bench = yaml.safe_load((REPO / "benchmarks" / "smoke.yaml").read_text())
    assert len(heavy) >= len(bench["methods"]) * len(bench["sizes"]) * 2  # train (or packs) + evaluations
    assert heavy == set(submitted), f"not submitted to SLURM: {[rule_of[j] for j in heavy - set(submitted)]}"
    # the profile makes the exact sbatch request of every job visible (the plugin logs it at debug level)
    calls = re.findall(r"^sbatch call: sbatch .*$", log, re.M)
    assert len(calls) >= len(submitted) and all(" -t " in c and " --mem " in c for c in calls), calls[:1]
    for rule in LOCAL_RULES:
        assert f"localrule {rule}:" in log

    # SLURM's own record (jobcomp/filetxt): each of those jobs completed, in this workflow's folder
    records = {int(m.group(1)): m.group(0) for m in re.finditer(r"^JobId=(\d+) .*$", slurm_cluster.read_text(), re.M)}
    for snakemake_job, slurm_job in submitted.items():
        record = records.get(slurm_job)
        assert record, f"SLURM has no record of job {slurm_job} ({rule_of[snakemake_job]})"
        assert "JobState=COMPLETED" in record and f"WorkDir={tmp_path} " in record, record


@pytest.mark.timeout(900)
def test_a_run_longer_than_the_job_limit_continues_in_the_next_job(slurm_cluster, tmp_path):
    """A pack of two runs of 8000 steps (about 20 s of training on 2 idle cores, 30-70 s on
    shared ones) under a job limit of 0.25 minutes (each job stops its runs 13.5 s after it started): the first SLURM job saves
    them mid-run and exits 75, Snakemake resubmits, a later job finishes them, and they end
    exactly where the same runs trained in one go end."""
    from stabench import paths
    from stabench.config import load_benchmark
    from stabench.loop import CONTINUE_EXIT
    from stabench.resources import stop_after_min

    bench = yaml.safe_load((REPO / "benchmarks" / "smoke.yaml").read_text())
    bench.update(name="chain", methods=["baseline"], sizes={"t16": bench["sizes"]["t16"]}, seeds=[0],
                 learning_rates=[1.0e-2, 3.0e-3])
    bench["train"].update(steps=8000, warmup_steps=50, probe_every=100, eval_every=1000, checkpoint_every=2000)
    bench["eval"] = {"runs": "none"}
    path = tmp_path / "chain.yaml"
    path.write_text(yaml.safe_dump(bench))
    results = paths.results_dir(load_benchmark(path))
    runs = [paths.run_dir(results, "baseline", "t16", label, 0) for label in paths.lr_labels(bench["learning_rates"])]
    proc = subprocess.run([*SNAKEMAKE, "--directory", str(tmp_path), *[f"{run}/metrics.json" for run in runs],
                           "--config", f"benchmark={path}", "max_job_minutes=0.25"],
                          capture_output=True, text=True, timeout=840, env=env_with_repo())
    log = proc.stdout + proc.stderr
    (tmp_path / "snakemake.log").write_text(log)
    assert proc.returncode == 0, log[-6000:]

    submitted = [int(s) for s in re.findall(r"Job \d+ has been submitted with SLURM jobid (\d+)", log)]
    assert "-t 1 " in " ".join(re.findall(r"^sbatch call: sbatch .*$", log, re.M))  # SLURM's least: a minute
    assert f"--stop-after-minutes {stop_after_min(1, 0.25):.4g} " in log
    records = {int(m.group(1)): m.group(0) for m in re.finditer(r"^JobId=(\d+) .*$", slurm_cluster.read_text(), re.M)}
    states = [re.search(r"JobState=(\w+)", records[j]).group(1) for j in submitted]
    print(f"{len(submitted)} SLURM jobs: {states}")
    # the job that stops exits CONTINUE_EXIT; the Snakemake around it in the SLURM job exits 1 (FAILED)
    assert len(submitted) >= 2 and states == ["FAILED"] * (len(submitted) - 1) + ["COMPLETED"], states
    assert len(re.findall(r"Trying to restart job", log)) == len(submitted) - 1
    assert f"returned non-zero exit status {CONTINUE_EXIT}" in log
    # Snakemake shows the failed job's log (its next job's log replaces it): the one line, each time
    stops = re.findall(r"^stabench: stopped at the job's time limit at step (\d+) of 8000 .*next job$", log, re.M)
    assert len(stops) == len(submitted) - 1 and stops == sorted(stops, key=int), stops

    # the same two runs in one go, here: same losses, bit for bit
    for run in runs:
        (tmp_path / "once" / run).mkdir(parents=True)
        shutil.copy(tmp_path / run / "run.json", tmp_path / "once" / run / "run.json")
    once = subprocess.run([sys.executable, "-m", "stabench", "train", *[a for run in runs for a in
                           ("--spec", str(tmp_path / "once" / run / "run.json"))],
                           "--data", str(tmp_path / results / "data"), "--threads", "1", "--no-progress"],
                          capture_output=True, text=True, timeout=300, env=env_with_repo())
    assert once.returncode == 0, once.stderr[-3000:]
    for run in runs:
        cut, whole = (json.loads((root / run / "metrics.json").read_text()) for root in (tmp_path, tmp_path / "once"))
        assert cut["resumed_from_step"] and whole["resumed_from_step"] is None
        assert cut["final_val_loss"] == whole["final_val_loss"]
        assert (tmp_path / run / "losses.csv").read_text() == (tmp_path / "once" / run / "losses.csv").read_text()
