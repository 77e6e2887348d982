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
    # a long run's continuations (attempt 3, 4, ...) do not ask ever more memory
    assert resources.train_mem_mb(smoke, "t16", attempt=17) == 2 * resources.train_mem_mb(smoke, "t16")
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


def test_no_request_exceeds_the_job_limit_retries_included(wortsman):
    """--config max_job_minutes: the longest wortsman runs ask for days; capped after the
    attempt multiplier, every request (a retry's too) fits the limit."""
    assert resources.train_runtime_min(wortsman, "d2048", gpus=1) > 1440  # uncapped: days
    for size in wortsman["sizes"]:
        for attempt in (1, 2, 5):
            for limit in (1440, 2880, 90.5):
                assert resources.train_runtime_min(wortsman, size, gpus=1, attempt=attempt, limit_min=limit) <= limit
                assert resources.eval_runtime_min(wortsman, size, gpu=True, attempt=attempt, limit_min=limit) <= limit
    assert resources.train_runtime_min(load_benchmark("smoke"), "t16", limit_min=0.05) == 1  # SLURM's least


def test_a_job_stops_before_its_limit_and_a_long_run_gets_enough_retries(wortsman):
    assert resources.stop_after_min(1440, 1440) == 1430  # the margin: a tenth, at most 10 minutes
    assert resources.stop_after_min(10, 1440) == 9       # a short job: stops before its own request
    assert resources.stop_after_min(1, 0.05) == pytest.approx(0.045)  # fractions, for tests
    longest = resources.train_runtime_min(wortsman, "d2048", gpus=1)
    retries = resources.chain_retries(longest, 1440)
    assert (retries - 1) * 1430 >= longest > (retries - 2) * 1430
    assert resources.chain_retries(10, 1440) == 2  # one continuation past the estimate, one failure


def test_measured_speed_replaces_the_flop_estimate():
    """A finished run of the same model, batch and device: its tokens/s sizes the job."""
    smoke = copy.deepcopy(load_benchmark("smoke"))
    smoke["train"]["steps"] = 100_000
    like = {"model": {"d_model": 32}, "train": {"batch_size": 8, "seq_len": 32, "world_size": 1}}
    run = {"config": like, "tokens_per_second": 2000.0, "packed_with": 1, "device": "cpu (1 threads, x86_64)"}
    slow = {**run, "tokens_per_second": 1000.0}
    assert resources.measured_tokens_per_second([run, slow], like) == 1000.0  # the slowest
    assert resources.measured_tokens_per_second([run], like, gpus=1) is None  # not on a GPU
    assert resources.measured_tokens_per_second([run], like, members=3) is None  # not in a pack of 3
    other = {**run, "config": {**like, "model": {"d_model": 64}}}
    assert resources.measured_tokens_per_second([other], like) is None  # another shape
    tokens = 100_000 * 8 * 32
    measured = resources.train_runtime_min(smoke, "t32", tokens_per_second=1000.0)
    assert measured >= tokens / 1000.0 / 60 * resources.SAFETY
    assert measured < tokens / 1000.0 / 60 * resources.SAFETY + 60  # startup and validation
    assert measured != resources.train_runtime_min(smoke, "t32")
