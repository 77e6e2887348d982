"""Learning-rate schedules and token counts, computed for the whole run before it starts.

The LR of every member at every step goes into one (steps + 1, K) device table, so the loop
reads this step's LRs as a row of it and never copies a host value to the device per step.
A schedule may run on tokens (a method's ``lr_schedule`` hook gets the tokens trained on
before the step); tokens per step are known in advance because ``transform_batch`` is a pure
function of (batch, step) whose output shape depends on the step only, so the engine applies
it once per step to a stand-in batch of zeros.
"""

from __future__ import annotations

import math

import torch

from .methods import MethodStack


def warmup_cosine(progress: float, warmup: float, total: float, peak: float, min_lr: float) -> float:
    """LR at ``progress`` (steps or tokens): linear warmup to ``peak``, cosine to ``min_lr``."""
    min_lr = min(min_lr, peak)
    if warmup > 0 and progress < warmup:
        return peak * progress / warmup
    span = max(total - warmup, 1e-12)
    frac = min(max((progress - warmup) / span, 0.0), 1.0)
    return min_lr + 0.5 * (peak - min_lr) * (1 + math.cos(math.pi * frac))


def tokens_before(config: dict, stack: MethodStack) -> list[int]:
    """tokens[s] = target tokens (all processes) trained on before step s, s = 1 .. steps + 1."""
    train = config["train"]
    hook = stack.exclusive("transform_batch")
    stand_in = torch.zeros(1, train["batch_size"], train["seq_len"] + 1, dtype=torch.int64)
    tokens = [0, 0]
    for step in range(1, train["steps"] + 1):
        batch = hook[0](stand_in, step, config, hook[1]) if hook else stand_in
        tokens.append(tokens[-1] + batch.shape[1] * (batch.shape[2] - 1))
    return tokens


def learning_rates(config: dict, stack: MethodStack, tokens: list[int]) -> list[float]:
    """lr[s] for s = 0 .. steps (lr[0] unused): the method's schedule, else warm-up + cosine."""
    train, peak = config["train"], config["lr"]
    hook = stack.exclusive("lr_schedule")
    out = [0.0]
    for step in range(1, train["steps"] + 1):
        if hook:
            out.append(float(hook[0](step, tokens[step], config, hook[1])))
        else:
            out.append(warmup_cosine(step, train["warmup_steps"], train["steps"], peak, train["min_lr"]))
    return out
