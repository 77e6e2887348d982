"""Sequence length warm-up (Li, Zhang & He, NeurIPS 2022, arXiv:2108.06084; DeepSpeed
curriculum learning "seqlen" with the truncation strategy).

Long sequences early in training cause extreme gradient variance and instability. Each
training batch (B, T + 1) is truncated to its first L + 1 tokens (L inputs and targets),
where L grows over ``steps`` optimizer steps from ``start`` to the full seq_len T:

    linear:  L = start + (T - start) * min(step / steps, 1)
    root:    L = start + (T - start) * min(step / steps, 1) ** (1 / root)

rounded DOWN to a multiple of 8 (``multiple``; never below 8, never above T), and exactly T
from step ``steps`` on (also when T is no multiple of 8). ``step`` is the trainer's 1-based
optimizer step, so step 1 uses ``start`` (rounded down).

The LR schedule runs on tokens seen, not steps (the paper; DeepSpeed's --lr-warmup-tokens
and --lr-decay-tokens): linear warm-up over warmup_steps * B * T tokens (the tokens the
baseline's warm-up sees), then cosine to train.min_lr at the token count this run reaches
after train.steps steps (computed from the deterministic length schedule), so the LR ends at
min_lr at the last step as the baseline's does (arg ``decay_tokens: full`` decays over
steps * B * T tokens instead, as if every step were full length; the LR then never reaches
its minimum). Early short-sequence steps see fewer tokens, so the warm-up also spans more
steps. The LR of step s uses the tokens seen through step s (its own batch included), as the
step schedule uses the 1-based step. Token counts cover the global batch (all processes).

Budget (arg ``budget``): Li et al. compare at equal tokens, so by default (``tokens``) the run
trains exactly the tokens the benchmark's full-length runs see (arg ``tokens`` per batch row,
default train.steps x seq_len), no more: it takes the fewest steps whose lengths reach them
(short early steps make it a few more steps), and the few tokens the last of those steps would
overshoot by come off the end of the warm-up (``length_table``): from the step where the length
last grows, ``multiple`` tokens a step, so the warm-up's last length is held a few steps longer
(the lengths stay non-decreasing; at most seq_len / multiple steps change, each by at most
``multiple`` tokens). Its LR decays over those tokens. ``steps`` keeps the benchmark's step
count (fewer tokens; ``tokens`` is then not used). The warm-up length in steps is fixed from
the benchmark's own step count either way.

Defaults chosen: start 8 (the paper's start for small models), ``steps`` = ``fraction`` 0.3
of train.steps when not given (the paper warms up over a few percent to a third of training
depending on scale; 30% keeps the effect visible in short benchmark runs), linear schedule,
root 2 when ``schedule: root``. The Adam second-moment probe the paper uses is a general probe.
"""

from __future__ import annotations

import math
from functools import lru_cache

from stabench.contract import Probe, ProbeFamily
from stabench.schedule import warmup_cosine

VERSION = "3"
ARGS = {"start": 8, "steps": None, "fraction": 0.3, "schedule": "linear", "root": 2.0,
        "multiple": 8, "decay_tokens": "run", "budget": "tokens", "tokens": None}
BUDGETS = ("tokens", "steps")
SCHEDULES = ("linear", "root")
ARG_TYPES = {"steps": (int, None), "tokens": (int, None)}
ARG_ALLOWED = {"start": ">= 1", "steps": ">= 1", "fraction": "> 0, <= 1", "schedule": SCHEDULES, "root": "> 0",
               "multiple": ">= 1", "decay_tokens": ("run", "full"), "budget": BUDGETS, "tokens": ">= 1"}


def seq_len_at(step: int, full: int, total: int, start: int = 8, schedule: str = "linear",
               root: float = 2.0, multiple: int = 8) -> int:
    """Training sequence length (inputs per row) at optimizer step ``step`` (1-based)."""
    if schedule not in SCHEDULES:
        raise ValueError(f"seq_len_warmup: schedule {schedule!r}; valid: {', '.join(SCHEDULES)}")
    if total <= 0 or step >= total:
        return full
    frac = min(max(step / total, 0.0), 1.0)
    if schedule == "root":
        frac = frac ** (1.0 / root)
    length = start + (full - start) * frac
    length = int(math.floor(length / multiple)) * multiple
    return max(min(length, full), min(multiple, full))


def warmup_length(config: dict, args: dict) -> int:
    """Steps over which the length grows: arg steps, else fraction * train.steps."""
    if args.get("steps") is not None:
        return int(args["steps"])
    return max(1, int(round(args["fraction"] * config["train"]["steps"])))


@lru_cache(maxsize=64)
def length_table(steps: int, full: int, total: int, start: int = 8, schedule: str = "linear", root: float = 2.0,
                 multiple: int = 8, tokens: int | None = None) -> tuple[int, ...]:
    """Sequence length of steps 1 .. ``steps`` (entry s - 1 is step s): ``seq_len_at``, and with
    ``tokens`` (per batch row) trimmed to sum to exactly that many. The excess comes off the
    step where the length last grows, at most ``multiple`` tokens at a time; that opens a step
    of growth right after it, which the next cut takes, so the last length below the one it
    grows to is held a few steps longer and the lengths stay non-decreasing, never below
    ``min(multiple, full)``."""
    lengths = [seq_len_at(s, full, total, start, schedule, root, multiple) for s in range(1, steps + 1)]
    if tokens is None:
        return tuple(lengths)
    excess = sum(lengths) - tokens
    if excess < 0:
        raise ValueError(f"seq_len_warmup: {steps} steps see {sum(lengths)} tokens a row, fewer than {tokens}")
    floor = min(multiple, full)

    def gap(i: int) -> int:
        return lengths[i] - (lengths[i - 1] if i else floor)

    i = len(lengths) - 1
    while excess > 0:
        while i >= 0 and gap(i) <= 0:
            i -= 1
        if i < 0:
            raise ValueError(f"seq_len_warmup: cannot trim {excess} more tokens a row")
        cut = min(multiple, excess, gap(i))
        lengths[i] -= cut
        excess -= cut
        i = min(i + 1, len(lengths) - 1)  # the cut opened a gap after step i (if any)
    return tuple(lengths)


def lengths_of(config: dict, args: dict) -> tuple[int, ...]:
    """The run's sequence length at each of its train.steps steps (its configure hook has run)."""
    train = config["train"]
    tokens = args.get("tokens") if args["budget"] == "tokens" else None
    return length_table(train["steps"], train["seq_len"], warmup_length(config, args), args["start"],
                        args["schedule"], float(args["root"]), args["multiple"], tokens)


def _length(step: int, config: dict, args: dict) -> int:
    table = lengths_of(config, args)
    return table[step - 1] if 1 <= step <= len(table) else config["train"]["seq_len"]


def run_tokens_per_row(config: dict, args: dict) -> int:
    """Sum of sequence lengths over all train.steps steps (tokens per batch row)."""
    return sum(lengths_of(config, args))


def steps_for_tokens(tokens_per_row: int, full: int, total: int, start: int, schedule: str, root: float,
                     multiple: int) -> int:
    """The fewest steps whose sequence lengths add up to at least ``tokens_per_row``."""
    seen, step = 0, 0
    while seen < tokens_per_row:
        step += 1
        seen += seq_len_at(step, full, total, start, schedule, root, multiple)
    return step


def configure(config, args):
    if args["budget"] not in BUDGETS:
        raise ValueError(f"seq_len_warmup: budget {args['budget']!r}; valid: {', '.join(BUDGETS)}")
    if args["schedule"] not in SCHEDULES:
        raise ValueError(f"seq_len_warmup: schedule {args['schedule']!r}; valid: {', '.join(SCHEDULES)}")
    # The warm-up length is fixed against the benchmark's steps, before any change to them.
    args["steps"] = warmup_length(config, args)
    if args["budget"] == "tokens":  # train exactly the tokens of the benchmark's full-length runs
        train = config["train"]
        if args["tokens"] is None:
            args["tokens"] = train["steps"] * train["seq_len"]
        train["steps"] = steps_for_tokens(args["tokens"], train["seq_len"], args["steps"], args["start"],
                                          args["schedule"], float(args["root"]), args["multiple"])
    if args["decay_tokens"] not in ("run", "full"):
        raise ValueError(f"seq_len_warmup: decay_tokens {args['decay_tokens']!r}; valid: 'run', 'full'")
    if args["start"] < 1 or args["multiple"] < 1 or args["root"] <= 0:
        raise ValueError("seq_len_warmup: start and multiple must be >= 1 and root > 0")


def transform_batch(batch, step, config, args):
    """(members, B, T + 1) token windows -> (members, B, L + 1): the first L + 1 tokens of each."""
    length = _length(step, config, args)
    return batch[..., : length + 1]


def lr_schedule(step, tokens, config, args):
    """The LR from tokens seen: warm-up and cosine on tokens (``tokens``: before this step)."""
    train = config["train"]
    per_row = train["batch_size"]  # the global batch
    warmup = train["warmup_steps"] * per_row * train["seq_len"]
    if args["decay_tokens"] == "run":
        total = per_row * run_tokens_per_row(config, args)
    else:
        total = per_row * train["steps"] * train["seq_len"]
    seen = tokens + per_row * _length(step, config, args)  # including this step's batch, as step is 1-based
    return warmup_cosine(seen, warmup, total, config["lr"], train["min_lr"])


def probes(args):
    """The training sequence length of each probe step (what the schedule did)."""
    return {"seq_len": Probe(lambda ctx: {"seq_len": ctx.batch.shape[-1] - 1},
                             ProbeFamily("training sequence length", headline="seq_len"))}
