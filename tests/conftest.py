"""Shared fixtures for the engine tests (tests/test_engine_*.py).

``engine_bench`` is one tiny benchmark (2-layer d=32 GPT, 40 steps of 8 x 32 tokens on 400
wiki-vital documents with a 512-token BPE) whose data is prepared once per session, so every
training test costs a second or two on a laptop CPU.
"""

from __future__ import annotations

import contextlib
import copy
import textwrap
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml

TINY_BENCHMARK = {
    "name": "enginetest",
    "data": {"source": "wiki-vital", "max_documents": 400, "vocab_size": 512},
    "sizes": {"tiny": {"d_model": 32, "n_layers": 2, "n_heads": 2}},
    "train": {"steps": 40, "batch_size": 8, "seq_len": 32, "warmup_steps": 5, "eval_every": 20,
              "eval_windows": 16, "probe_every": 10, "checkpoint_every": 20},
    "methods": ["baseline", "qk_layernorm", "z_loss", "qk_layernorm+z_loss"],
    "learning_rates": [1.0e-3, 1.0e-2],
}


@dataclass(frozen=True)
class EngineBench:
    benchmark: dict      # validated, defaults filled (stabench.config.load_benchmark)
    path: Path           # the YAML file
    data_dir: Path       # prepared data folder

    def load(self, overrides: list[str] | None = None) -> dict:
        """The benchmark re-read with ``--set`` style overrides."""
        from stabench.config import load_benchmark
        return load_benchmark(self.path, overrides or [])

    def with_methods(self, methods: list) -> dict:
        """A validated copy of the benchmark with another ``methods`` list."""
        from stabench.config import validate
        bench = copy.deepcopy(self.benchmark)
        bench["methods"] = methods
        return validate(bench)


@pytest.fixture(scope="session")
def engine_bench(tmp_path_factory) -> EngineBench:
    from stabench.config import load_benchmark
    from stabench.data import prepare_data

    root = tmp_path_factory.mktemp("engine_bench")
    path = root / "enginetest.yaml"
    path.write_text(yaml.safe_dump(TINY_BENCHMARK, sort_keys=False))
    benchmark = load_benchmark(path)
    data_dir = root / "data"
    prepare_data(benchmark["data"], data_dir, progress=False)
    return EngineBench(benchmark, path, data_dir)


def resolve(benchmark: dict, method: str = "baseline", size: str = "tiny", lr: float = 1e-2, seed: int = 0):
    """The RunSpec of one run of ``benchmark``."""
    from stabench.runspec import resolve_run
    return resolve_run(benchmark, method=method, size=size, lr=lr, seed=seed)


@pytest.fixture
def run_training(engine_bench):
    """``run_training(out_dir, benchmark=None, **resolve_kwargs) -> metrics`` (a K = 1 run)."""
    from stabench.loop import train

    def run(out_dir, benchmark: dict | None = None, **kwargs) -> dict:
        run_ = resolve(benchmark or engine_bench.benchmark, **kwargs)
        return train([run_], [out_dir], engine_bench.data_dir, progress=False)[0]

    return run


@pytest.fixture
def train_pack(engine_bench):
    """``train_pack(out_dirs, lrs, seeds=None, benchmark=None, method=...) -> [metrics]`` (one ensemble)."""
    from stabench.loop import train

    def run(out_dirs, lrs, seeds=None, benchmark: dict | None = None, method: str = "baseline", **kw) -> list[dict]:
        seeds = seeds or [0] * len(lrs)
        runs = [resolve(benchmark or engine_bench.benchmark, method=method, lr=lr, seed=s) for lr, s in zip(lrs, seeds)]
        return train(runs, out_dirs, engine_bench.data_dir, progress=False, **kw)

    return run


def pytest_configure(config):
    # Parameters of a pack are strided views of one (K, N) tensor; torch reports that their
    # gradients "do not obey the gradient layout contract" (a possible slowdown, not an error).
    # stabench.loop silences it at import, which pytest's per-test warning capture undoes.
    config.addinivalue_line("filterwarnings", "ignore:grad and param do not obey the gradient layout contract")


# Bitwise comparisons of losses need a fixed intra-op thread count; tiny models run fastest
# on one thread anyway, so the whole suite uses one.
torch.set_num_threads(1)


@pytest.fixture
def torch_one_thread():
    """For tests that change the thread count: back to the suite's one thread afterwards."""
    yield
    torch.set_num_threads(1)


@pytest.fixture
def tmp_methods(tmp_path, monkeypatch):
    """``write(source, stem=...) -> unique method name`` in a folder on STABENCH_METHODS_PATH.

    Loaded methods are cached in sys.modules as 'stabench_methods.<name>', so each file gets
    a fresh unique name.
    """
    folder = tmp_path / "extra_methods"
    folder.mkdir()
    monkeypatch.setenv("STABENCH_METHODS_PATH", str(folder))

    def write(source: str, stem: str = "m") -> str:
        name = f"{stem}_{uuid.uuid4().hex[:10]}"
        (folder / f"{name}.py").write_text(textwrap.dedent(source))
        return name

    return write


@contextlib.contextmanager
def crash_at_step(step: int):
    """Make the loop's probes raise RuntimeError('killed') at ``step``: a crash right after that
    step's optimizer update, for resume tests (separate runs and packs)."""
    import stabench.loop as loop
    real = loop.run_probes

    def probes(ctx, extra):
        if ctx.step == step:
            raise RuntimeError("killed")
        return real(ctx, extra)

    loop.run_probes = probes
    try:
        with pytest.raises(RuntimeError, match="killed"):
            yield
    finally:
        loop.run_probes = real


def per_param(optimizer, attr: str) -> dict[str, float]:
    """name -> the value of a per-element option (``lr_mult``, ``weight_decay``, ``eps``) of an
    Optimizer on that parameter (uniform over its elements), for member 0."""
    option = getattr(optimizer, attr)
    out = {}
    for name in optimizer.ensemble.names:
        if isinstance(option, float):
            out[name] = option
        else:
            distinct = option[0, optimizer.ensemble.columns(name)].unique().tolist()
            assert len(distinct) == 1, (attr, name)
            out[name] = distinct[0]
    return out
