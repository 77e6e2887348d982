"""stabench/resources.py: what a cluster job asks for grows with the run it holds."""

import copy

import pytest

from stabench import resources
from stabench.config import load_benchmark


@pytest.fixture(scope="module")
def wortsman():
    return load_benchmark("wortsman")


def test_parameter_count_matches_the_model():
    import torch  # noqa: F401  (the model needs it; the estimate does not)
    from stabench.model import GPT

    size = {"d_model": 64, "n_layers": 3, "n_heads": 2}
    model = GPT(vocab_size=500, seq_len=40, **size)
    counted = resources.parameter_count(size, vocab=500, seq_len=40)
    assert counted == pytest.approx(model.num_parameters(non_embedding=False), rel=0.01)  # norms aside


def test_runtime_and_memory_grow_with_steps_size_and_members(wortsman):
    longer = copy.deepcopy(wortsman)
    longer["train"]["steps"] *= 4
    assert resources.train_runtime_min(longer, "d768", gpus=1) > 3 * resources.train_runtime_min(wortsman, "d768", gpus=1)
    assert resources.train_runtime_min(wortsman, "d1024", gpus=1) > resources.train_runtime_min(wortsman, "d512", gpus=1)
    assert resources.train_mem_mb(wortsman, "d2048", gpus=8) > resources.train_mem_mb(wortsman, "d256", gpus=1)
    assert resources.train_runtime_min(wortsman, "d512", gpus=1, members=7) > \
        6 * resources.train_runtime_min(wortsman, "d512", gpus=1)
    # more GPUs for the same run: shorter
    assert resources.train_runtime_min(wortsman, "d1024", gpus=4) < resources.train_runtime_min(wortsman, "d1024", gpus=1)


def test_tiny_runs_ask_the_floor_and_a_retry_asks_more():
    smoke = load_benchmark("smoke")
    assert resources.train_runtime_min(smoke, "t16") == resources.MIN_RUNTIME_MIN
    assert resources.train_runtime_min(smoke, "t16", attempt=2) == 2 * resources.MIN_RUNTIME_MIN
    assert resources.train_mem_mb(smoke, "t16", attempt=2) == 2 * resources.train_mem_mb(smoke, "t16")
    assert resources.eval_mem_mb(smoke, "t32") <= 2000  # a smoke job fits a small node


def test_size_fields_override_the_estimate(wortsman):
    bench = copy.deepcopy(wortsman)
    bench["sizes"]["d256"].update(runtime_min=90, mem_mb=4321)
    assert resources.train_runtime_min(bench, "d256", gpus=1) == 90
    assert resources.train_runtime_min(bench, "d256", gpus=1, members=7) == 630
    assert resources.train_mem_mb(bench, "d256", gpus=1) == 4321
    assert resources.train_runtime_min(bench, "d384", gpus=1) == resources.train_runtime_min(wortsman, "d384", gpus=1)


def test_packs_pay_on_a_cpu_always_and_on_a_gpu_for_small_steps():
    """--config pack=auto: every size packs on a CPU; on a GPU the sizes whose member step is at
    most PACK_MAX_STEP_FLOPS_GPU (the measured d128-d512 proxies pack, the wortsman ladder does not)."""
    from stabench import resources
    from stabench.config import load_benchmark
    proxies, wortsman = load_benchmark("proxies"), load_benchmark("wortsman")
    assert all(resources.pack_pays(proxies, s, gpus=0) for s in proxies["sizes"])
    assert all(resources.pack_pays(proxies, s, gpus=1) for s in proxies["sizes"])
    assert not any(resources.pack_pays(wortsman, s, gpus=1) for s in wortsman["sizes"])
    assert all(resources.pack_pays(wortsman, s, gpus=0) for s in wortsman["sizes"])
    d = proxies["sizes"]["d128"]["d_model"]
    assert resources.step_flops(proxies, "d128") == pytest.approx(
        32 * 256 * resources.flops_per_token({"d_model": d, "n_layers": 2}, 8192, 256))
