"""The model's settings have one source (issue 19): the schema's ``model`` defaults; a run's
``config["model"]`` holds exactly GPT's keyword arguments, and an unknown key is an error, not
swallowed (``GPT`` has no ``**kwargs``)."""

from __future__ import annotations

import inspect

import pytest

from stabench.config import ConfigError, load_schema
from stabench.model import GPT
from stabench.runspec import MODEL_KEYS, check_model_keys, resolve_run

from conftest import resolve


def test_gpt_defaults_are_the_schemas():
    schema = load_schema()["properties"]["model"]["properties"]
    params = inspect.signature(GPT).parameters
    defaulted = {name for name, p in params.items() if p.default is not inspect.Parameter.empty} - {"members"}
    assert defaulted == set(schema), "GPT's defaulted arguments are the schema's model fields"
    for name in schema:
        assert params[name].default == schema[name]["default"], name


def test_gpt_rejects_an_unknown_argument():
    with pytest.raises(TypeError, match="mlp_ratoi"):
        GPT(vocab_size=11, seq_len=5, d_model=8, n_layers=1, n_heads=2, mlp_ratoi=2)


def test_a_runs_model_config_is_exactly_gpts_arguments(engine_bench):
    config = resolve(engine_bench.benchmark).config
    assert set(config["model"]) == set(MODEL_KEYS)
    assert set(MODEL_KEYS) == set(inspect.signature(GPT).parameters) - {"members"}
    GPT(**config["model"])  # builds as the ensemble does


def test_an_unknown_model_key_is_one_line_naming_it_and_the_valid_keys():
    with pytest.raises(ConfigError) as err:
        check_model_keys({"d_model": 8, "rope_theta": 1e4})
    text = str(err.value)
    assert "\n" not in text and "'rope_theta'" in text
    assert text.endswith("valid: " + ", ".join(MODEL_KEYS))


def test_a_method_that_adds_an_unknown_model_key_is_named(engine_bench, tmp_methods):
    name = tmp_methods('''
        """Sets a model setting GPT does not have."""
        VERSION = "1"

        def configure(config, args):
            config["model"]["rope_theta"] = 10000.0
    ''', stem="rope")
    bench = dict(engine_bench.benchmark, methods=[name])
    with pytest.raises(ConfigError, match=rf"method '{name}' \(configure\): unknown model key 'rope_theta'; valid: "):
        resolve_run(bench, method=name, size="tiny", lr=1e-2, seed=0)
