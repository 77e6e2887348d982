"""What a train or eval job asks a cluster for: wall minutes and host memory, from the benchmark.

A SLURM job that asks too little is killed (TIMEOUT, OUT_OF_MEMORY); one that asks far too much
waits longer in the queue and blocks others. One fixed request for every size (the old profile
asked 240 min and 32 GB of every run) is wrong both ways across a ladder from 3 M to 1.6 B
parameters, so the request is an estimate from the run's own shape, overridable per size with
``sizes.<name>.runtime_min`` and ``sizes.<name>.mem_mb`` in the benchmark.

Runtime. A training step costs ``tokens_per_step x flops_per_token / rate + STEP_OVERHEAD_S``:
FLOPs per token are the usual 6 x matmul parameters + attention (Kaplan et al.; the same
formula as ``stabench speed``), validation passes add their forward FLOPs (a third of a
training token's). ``rate`` is an effective (not peak) FLOP/s:
- CPU: ``CPU_FLOPS_PER_THREAD`` x threads. ``stabench speed`` measured 81 GFLOP/s on one
  x86_64 thread at d256 (torch 2.13, fp32) and a fixed ~30 ms per step at d32-d64 (probes,
  optimizer, Python); the constants are half that rate and 1.6 x that overhead, for slower
  machines.
- GPU: ``GPU_FLOPS`` per GPU. On one H200 stabench's compiled single runs reached 30-400 TFLOP/s
  (d128 to d768, docs/performance.md; nanoGPT-style references reach 290-380 TFLOP/s at
  d512-d768 on an H100), so 150 TFLOP/s leaves room for an A100 or an uncompiled run; a ~4 ms
  per-step overhead, doubled.
The sum is multiplied by ``SAFETY`` (1.5), and a pack of K runs costs K runs. At least
``MIN_RUNTIME_MIN``: schedulers do not start short jobs faster below a few minutes, and each
job also starts Python, Snakemake and torch.

Memory (host RAM; a GPU job's weights live on the GPU, but the process, the CUDA context and
the checkpoint's staging copy live here). ``BASE_MB`` per process (a smoke train job measured
340 MB and its eval 410 MB peak RSS, plus the Snakemake process SLURM runs around it; a CUDA
process takes ~2 GB more), plus 16 bytes per parameter (fp32 weights, gradients and Adam's
two moments: live state on CPU, the checkpoint copy on GPU) per member, plus on CPU the
activations (Korthikanti et al. 2022, per layer ``s b (34 d + 5 heads s)`` bytes at 16 bit,
doubled for fp32, and three fp32 copies of the logits). Then ``x SAFETY_MEM``, rounded up to a
whole GB. Evaluation loads one checkpoint (16 B per parameter) and the model (4 B) next to the
base process.

Measured speed. Where runs of the same (method, size) have finished, with the same model and
batch on the same kind of device, in packs of the same size (``measured_tokens_per_second``:
the slowest of their metrics.json ``tokens_per_second``, per member), training takes
``tokens / that`` instead of the FLOP estimate; validation, start-up and ``SAFETY`` are added
as above. (The workflow reads the metrics; these functions only compute.)

A retry (``--retries``) asks ``attempt`` times as much (after the floor and the rounding), so a
job killed at its limit gets more; a train job's memory at most ``MEM_ATTEMPTS_MAX`` times as
much, since most of its retries are continuations of a long run, not a job that ran out of
memory.

The job limit (``--config max_job_minutes``, default 1440 = 24 h). No request exceeds it,
retries included (``capped``, after the attempt multiplier). A train job is told to stop
``stop_after_min`` minutes after it started (its request, at most the limit, less a margin
for the last checkpoint and the job's start: a tenth, at most ``STOP_MARGIN_MAX_MIN``); its
runs then save a checkpoint at the current step and the job exits with
``stabench.loop.CONTINUE_EXIT``. The workflow resubmits it (the train rules' ``retries``,
``chain_retries``), and the next job resumes from the checkpoint.
"""

from __future__ import annotations

import math

from .evaluation.tasks import OFFLINE_TASKS

CPU_FLOPS_PER_THREAD = 40e9
GPU_FLOPS = 150e12
STEP_OVERHEAD_S = {"cpu": 0.05, "gpu": 0.008}
STARTUP_S = 120.0              # imports, data memmap, torch.compile, first checkpoint, eval at init
SAFETY = 1.5
MIN_RUNTIME_MIN = 10
BASE_MB = {"cpu": 1500, "gpu": 3500}
STATE_BYTES_PER_PARAM = 16
SAFETY_MEM = 1.25
EVAL_CHOICES = 4               # answers scored per example (cloze tasks); continuation scores 1
EVAL_EXAMPLES_UNKNOWN = 10_000  # hub tasks without eval.limit: a typical task's size
STOP_MARGIN_FRACTION = 0.1     # of a train job's minutes, kept for its last checkpoint and start-up
STOP_MARGIN_MAX_MIN = 10.0
MEM_ATTEMPTS_MAX = 2           # a train job's memory grows with retries up to this factor, not further


def parameter_count(size: dict, vocab: int, seq_len: int, mlp_ratio: int = 4) -> int:
    """Parameters of stabench's GPT (untied embedding and head, learned positions)."""
    d, layers = size["d_model"], size["n_layers"]
    return layers * (4 + 2 * mlp_ratio) * d * d + 2 * vocab * d + seq_len * d


def flops_per_token(size: dict, vocab: int, seq_len: int, mlp_ratio: int = 4) -> float:
    """Training FLOPs per token: 6 x matmul parameters + 12 x layers x seq_len x d (attention)."""
    d, layers = size["d_model"], size["n_layers"]
    matmul = layers * (4 + 2 * mlp_ratio) * d * d + d * vocab
    return 6 * matmul + 12 * layers * seq_len * d


# A pack of a size trains by default only where packing measured faster than the same runs one
# after another (docs/performance.md). On a CPU every measured size gained (1.04-1.37x at d32 and
# d64). On an H200 (bf16, 64 x 256 tokens a step) a pack of 7 LRs gave 2.4x the tokens/s of one
# run at d128 (1.5e11 FLOPs a step), 1.9x at d256 (5.7e11), a pack of 3 1.2x at d512 (3.1e12),
# all eager; a single d768 run (1.1e13 FLOPs a step) already used 29 % of the GPU. So a size
# packs on a GPU when one member's step is at most this many FLOPs:
PACK_MAX_STEP_FLOPS_GPU = 5e12


def step_flops(benchmark: dict, size_name: str) -> float:
    """Training FLOPs of one member's step (all processes together)."""
    size, vocab, seq_len, mlp_ratio = _shape(benchmark, size_name)
    return benchmark["train"]["batch_size"] * seq_len * flops_per_token(size, vocab, seq_len, mlp_ratio)


def pack_pays(benchmark: dict, size_name: str, *, gpus: int) -> bool:
    """Whether the workflow packs a size's LR sweeps by default (``--config pack=auto``)."""
    return not gpus or step_flops(benchmark, size_name) <= PACK_MAX_STEP_FLOPS_GPU


def _shape(benchmark: dict, size_name: str) -> tuple[dict, int, int, int]:
    size = benchmark["sizes"][size_name]
    return (size, benchmark["data"]["vocab_size"], benchmark["train"]["seq_len"],
            benchmark.get("model", {}).get("mlp_ratio", 4))


def _minutes(seconds: float) -> int:
    return max(MIN_RUNTIME_MIN, math.ceil(seconds / 60))


def _gb(mb: float) -> int:
    return int(math.ceil(mb / 1000) * 1000)


def capped(minutes: int, limit_min: float | None) -> int:
    """A request of whole minutes, never above the job limit (but at least SLURM's one minute)."""
    return minutes if limit_min is None else min(minutes, max(1, math.floor(limit_min)))


def stop_after_min(runtime_min: float, limit_min: float) -> float:
    """Minutes after its start at which a train job asking ``runtime_min`` stops its runs at a
    checkpoint: the job's time (at most the limit) less a tenth, at most STOP_MARGIN_MAX_MIN."""
    job = min(runtime_min, limit_min)
    return job - min(STOP_MARGIN_MAX_MIN, STOP_MARGIN_FRACTION * job)


def chain_retries(estimate_min: float, limit_min: float) -> int:
    """Retries a train rule gets: the jobs a run of ``estimate_min`` minutes needs under the
    limit (each stopping at ``stop_after_min`` of the limit), plus one for an ordinary failure
    (the SLURM profile's ``retries: 1``). A run within one job still has two: one continuation
    if it runs longer than its estimate, one failure."""
    return math.ceil(estimate_min / stop_after_min(limit_min, limit_min)) + 1


def measured_tokens_per_second(metrics: list[dict], like: dict, *, gpus: int = 0,
                               members: int = 1) -> float | None:
    """The slowest training speed (tokens/s per member) among finished runs (their metrics.json)
    that trained as a job of the run ``like`` (a run.json's contents) would: the same model and
    batch shape on as many processes, on a GPU or not, in packs of ``members``; None if none did."""
    def same(m: dict) -> bool:
        config = m.get("config") or {}
        train, want = config.get("train") or {}, like["train"]
        return (config.get("model") == like["model"]
                and all(train.get(k) == want[k] for k in ("batch_size", "seq_len", "world_size"))
                and isinstance(m.get("tokens_per_second"), (int, float)) and m["tokens_per_second"] > 0
                and m.get("packed_with") == members
                and str(m.get("device", "")).startswith("cpu") == (not gpus))
    speeds = [m["tokens_per_second"] for m in metrics if same(m)]
    return min(speeds) if speeds else None


def train_runtime_min(benchmark: dict, size_name: str, *, gpus: int = 0, threads: int = 1,
                      members: int = 1, attempt: int = 1, tokens_per_second: float | None = None,
                      limit_min: float | None = None) -> int:
    """Wall minutes a train job of ``members`` runs of this size asks for: from the measured
    ``tokens_per_second`` (per member) where given, else from its FLOPs; at most ``limit_min``."""
    override = benchmark["sizes"][size_name].get("runtime_min")
    if override is not None:
        return capped(math.ceil(override * members) * attempt, limit_min)
    size, vocab, seq_len, mlp_ratio = _shape(benchmark, size_name)
    train = benchmark["train"]
    device = "gpu" if gpus else "cpu"
    rate = gpus * GPU_FLOPS if gpus else max(threads, 1) * CPU_FLOPS_PER_THREAD
    per_token = flops_per_token(size, vocab, seq_len, mlp_ratio)
    train_tokens = train["steps"] * train["batch_size"] * seq_len
    eval_tokens = (train["steps"] // train["eval_every"] + 1) * train["eval_windows"] * seq_len
    if tokens_per_second:  # measured: the members of a pack train at once
        seconds = train_tokens / tokens_per_second + members * eval_tokens / 3 * per_token / rate
    else:
        seconds = members * ((train_tokens + eval_tokens / 3) * per_token / rate
                             + train["steps"] * STEP_OVERHEAD_S[device])
    return capped(_minutes((STARTUP_S + seconds) * SAFETY) * attempt, limit_min)


def train_mem_mb(benchmark: dict, size_name: str, *, gpus: int = 0, members: int = 1,
                 attempt: int = 1) -> int:
    """Host memory (MB) a train job of ``members`` runs of this size asks for."""
    override = benchmark["sizes"][size_name].get("mem_mb")
    if override is not None:
        return int(override * min(attempt, MEM_ATTEMPTS_MAX))
    size, vocab, seq_len, mlp_ratio = _shape(benchmark, size_name)
    params = parameter_count(size, vocab, seq_len, mlp_ratio)
    mb = BASE_MB["gpu"] * gpus if gpus else BASE_MB["cpu"]
    mb += members * params * STATE_BYTES_PER_PARAM / 1e6
    if not gpus:
        tokens = benchmark["train"]["batch_size"] * seq_len
        d, layers, heads = size["d_model"], size["n_layers"], size["n_heads"]
        activations = layers * tokens * (34 * d + 5 * heads * seq_len) * 2 + 3 * tokens * vocab * 4
        mb += members * activations / 1e6
    return _gb(mb * SAFETY_MEM) * min(attempt, MEM_ATTEMPTS_MAX)


def eval_runtime_min(benchmark: dict, size_name: str, *, gpu: bool = False, threads: int = 1,
                     attempt: int = 1, limit_min: float | None = None) -> int:
    """Wall minutes of one zero-shot evaluation (lm-eval) of a run of this size."""
    size, vocab, seq_len, mlp_ratio = _shape(benchmark, size_name)
    cfg = benchmark["eval"]

    def examples(task: str) -> int:  # offline tasks hold n_examples; hub tasks their own size
        return cfg["limit"] or (cfg["n_examples"] if task in OFFLINE_TASKS else EVAL_EXAMPLES_UNKNOWN)

    scored = cfg["tasks"] + [t for t in cfg["init_tasks"] if t in cfg["tasks"]]  # init: scored twice
    tokens = sum(examples(t) for t in scored) * EVAL_CHOICES * seq_len
    rate = GPU_FLOPS if gpu else max(threads, 1) * CPU_FLOPS_PER_THREAD
    seconds = tokens * flops_per_token(size, vocab, seq_len, mlp_ratio) / 3 / rate
    return capped(_minutes((STARTUP_S + seconds) * SAFETY) * attempt, limit_min)


def eval_mem_mb(benchmark: dict, size_name: str, *, gpu: bool = False, attempt: int = 1) -> int:
    """Host memory (MB) of one evaluation: the process, a loaded checkpoint and the model."""
    size, vocab, seq_len, mlp_ratio = _shape(benchmark, size_name)
    params = parameter_count(size, vocab, seq_len, mlp_ratio)
    mb = BASE_MB["gpu" if gpu else "cpu"] + params * (STATE_BYTES_PER_PARAM + 4) / 1e6
    return _gb(mb * SAFETY_MEM) * attempt
