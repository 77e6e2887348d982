"""The training step's work does not grow with the members: the aten ops dispatched per
non-probe step (on a GPU in eager mode each is about one kernel launch) are the same for a
pack of K runs as for one run, and few; with train.compile the step is a bounded set of
graphs that never recompile after warm-up."""

from __future__ import annotations

import contextlib

import pytest
import torch

from conftest import resolve
from stabench.loop import train
from stabench.speed import OpCounter

STEPS = ["train.steps=12", "train.warmup_steps=2", "train.probe_every=4", "train.eval_every=12",
         "train.checkpoint_every=12"]


def ops_of_a_plain_step(engine_bench, tmp_path, method: str, members: int) -> int:
    bench = engine_bench.load(STEPS)
    runs = [resolve(bench, method=method, lr=lr) for lr in (1e-3, 2e-3, 3e-3, 5e-3, 1e-2, 2e-2)[:members]]
    counter = OpCounter()
    train(runs, [tmp_path / f"{method}-k{members}" / str(i) for i in range(members)], engine_bench.data_dir,
          progress=False, instrument=lambda step, probing: counter if step == 2 else contextlib.nullcontext())
    return counter.count


@pytest.mark.parametrize("method", ["baseline", "qk_layernorm+z_loss"])
def test_ops_per_step_do_not_grow_with_the_members(engine_bench, tmp_path, method):
    one = ops_of_a_plain_step(engine_bench, tmp_path, method, 1)
    six = ops_of_a_plain_step(engine_bench, tmp_path, method, 6)
    assert one <= 550  # the reference trainer's step is about 270 ops on a CPU; the old one took 2,745
    assert six <= 1.2 * one, (one, six)


def test_compiled_step_is_a_bounded_set_of_graphs_without_recompiles(engine_bench, tmp_path, monkeypatch):
    """Counted with dynamo's own counter (the aot_eager backend: the same graphs inductor gets)."""
    from torch._dynamo.testing import CompileCounterWithBackend
    counter = CompileCounterWithBackend("aot_eager")
    real = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: real(fn, backend=counter, **kw))
    bench = engine_bench.load([*STEPS, "train.compile=true", "train.steps=24"])
    runs = [resolve(bench, method="qk_layernorm+z_loss", lr=lr) for lr in (1e-3, 1e-2)]
    seen = {}

    @contextlib.contextmanager
    def instrument(step, probing):
        yield
        seen[step] = counter.frame_count

    train(runs, [tmp_path / "a", tmp_path / "b"], engine_bench.data_dir, progress=False, instrument=instrument)
    # step 1 compiles the plain step's forward and the update, step 2 each once more with the
    # step numbers symbolic, step 4 the probe step's forward (attention-logit capture); nothing
    # after the first probe step.
    assert seen[24] <= 6
    assert seen[24] == seen[5], seen


class HostReads(OpCounter):
    """Records the ops that read a tensor's value on the host (.item(), bool(), float())."""

    READS = ("aten._local_scalar_dense", "aten.item", "aten.is_nonzero", "aten.equal")

    def __init__(self):
        super().__init__()
        self.reads = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if str(func).startswith(self.READS):
            self.reads.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("method", ["baseline", "qk_layernorm+z_loss", "depth_warmup", "adam_atan2"])
def test_plain_steps_read_no_value_on_the_host(engine_bench, tmp_path, method):
    """Outside probe steps the step never waits for the device: no op reads a value back.
    (On a CPU this catches .item(), bool() and float() of tensors; a GPU adds nothing else.)"""
    bench = engine_bench.load(STEPS)
    runs = [resolve(bench, method=method, lr=lr) for lr in (1e-3, 1e-2)]
    reads = HostReads()
    train(runs, [tmp_path / "a", tmp_path / "b"], engine_bench.data_dir, progress=False,
          instrument=lambda step, probing: reads if not probing and step > 1 else contextlib.nullcontext())
    assert reads.reads == []
