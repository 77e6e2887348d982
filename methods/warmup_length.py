"""Longer learning-rate warm-up: set the length of the linear warm-up before cosine decay.

Wortsman et al. (2023, section 3.2.1) find that a longer warm-up lowers LR sensitivity,
most for the largest models (they compare 5e3 and 1e4 warm-up steps of 1e5, i.e. 5% and
10%: doubling the warm-up).

Args: ``steps`` (an int, the warm-up length in optimizer steps) or ``fraction`` (of
``train.steps``, rounded to the nearest step). ``steps`` wins when it is not null.
Default: ``fraction`` 0.2. The benchmarks here warm up for 10% of training (the schema's
100 of 1000 steps, cpu.yaml's 30 of 300), so 20% doubles it, as Wortsman's comparison does.
The schedule is otherwise unchanged (cosine decay to ``train.min_lr`` over the remaining
steps), and the peak LR means what it did, so LR sensitivity stays comparable.

(Named warmup_length, not warmup: the engine must not use a method's name as an identifier,
and its schedule function has a parameter called warmup.)
"""

from stabench.methods import MethodError

VERSION = "1"
ARGS = {"steps": None, "fraction": 0.2}
ARG_TYPES = {"steps": (int, None)}
ARG_ALLOWED = {"steps": ">= 0", "fraction": ">= 0, <= 1"}


def warmup_steps(total_steps: int, args: dict) -> int:
    """The warm-up length the args ask for, checked against the run length."""
    if args["steps"] is not None:
        steps = args["steps"]
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise MethodError(f"method warmup_length: steps must be a non-negative integer, got {steps!r}")
    else:
        fraction = args["fraction"]
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction <= 1:
            raise MethodError(f"method warmup_length: fraction must be a number in [0, 1], got {fraction!r}")
        steps = int(round(fraction * total_steps))
    if steps > total_steps:
        raise MethodError(f"method warmup_length: {steps} warm-up steps exceed the run's {total_steps} train.steps")
    return steps


def configure(config, args):
    config["train"]["warmup_steps"] = warmup_steps(config["train"]["steps"], args)
