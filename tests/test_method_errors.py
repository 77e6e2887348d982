"""A method's mistakes in words (issue 21): a hook that raises is one line naming the method,
the hook and the exception (the traceback in the run folder's stabench-error.log), and a
malformed method label says what a valid one looks like, not a regular expression."""

from __future__ import annotations

import pytest
import yaml

from stabench.cli import main


def test_a_hook_that_raises_is_one_line_naming_method_hook_and_exception(engine_bench, tmp_methods, tmp_path, capsys):
    DEBUG_NAME = "stabench-error.log"
    name = tmp_methods('''
        """Raises in its batch hook."""
        VERSION = "1"

        def transform_batch(batch, step, config, args):
            raise KeyError("no such column 'mask'")
    ''', stem="raising")
    bench = dict(engine_bench.benchmark, methods=[name])
    path = tmp_path / "b.yaml"
    path.write_text(yaml.safe_dump(bench))
    out = tmp_path / "run"
    code = main(["train", str(path), "--method", name, "--size", "tiny", "--lr", "0.01", "--out", str(out),
                 "--data", str(engine_bench.data_dir), "--no-progress", "--set", "train.steps=6"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0] == (f"stabench: error: method {name!r}: its hook 'transform_batch' raised KeyError: "
                      f"\"no such column 'mask'\" (traceback in {out / DEBUG_NAME})")
    trace = (out / DEBUG_NAME).read_text()
    assert "Traceback" in trace and "def transform_batch" not in trace and "raise KeyError" in trace


@pytest.mark.parametrize("methods", [["baseline+"], [{"use": "baseline+z_loss+"}]])
def test_a_malformed_method_label_says_what_is_valid(tmp_path, methods):
    from stabench.config import ConfigError, load_benchmark
    path = tmp_path / "b.yaml"
    path.write_text(yaml.safe_dump({"name": "t", "methods": methods, "sizes": {"s": {"d_model": 32, "n_layers": 1,
                                                                                       "n_heads": 1}},
                                    "learning_rates": [0.01]}))
    with pytest.raises(ConfigError) as exc:
        load_benchmark(path)
    text = str(exc.value)
    assert "allowed: method names (letters, digits and _, as the files in methods/) joined by '+'" in text, text
    assert "^[" not in text


@pytest.mark.parametrize("methods", [["baseline+"], [{"use": "baseline+z_loss+"}], ["qk-layernorm"]])
def test_a_malformed_method_label_lists_the_method_files_where_a_benchmark_is_loaded(tmp_path, methods):
    from stabench.benchmark import load_for_use
    from stabench.config import ConfigError
    from stabench.methods import known_methods
    path = tmp_path / "b.yaml"
    path.write_text(yaml.safe_dump({"name": "t", "methods": methods, "sizes": {"s": {"d_model": 32, "n_layers": 1,
                                                                                       "n_heads": 1}},
                                    "learning_rates": [0.01]}))
    with pytest.raises(ConfigError) as exc:
        load_for_use(path)
    text = str(exc.value)
    assert "joined by '+'" in text and f"known methods: {', '.join(known_methods())}" in text, text
    assert "baseline" in known_methods() and "\n" not in text and "^[" not in text


@pytest.mark.parametrize("label", ["baseline+", "+z_loss", "baseline++z_loss"])
def test_a_malformed_method_option_says_in_words_what_is_valid(tmp_path, capsys, monkeypatch, label):
    monkeypatch.setattr("stabench.offline.go_offline", lambda: None)  # the CLI's offline mode stays in this test
    code = main(["train", "smoke", "--method", label, "--size", "t16", "--lr", "0.01", "--out", str(tmp_path / "o"),
                 "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1, err
    assert f"method {label!r}: an empty name" in err[0] and "method names joined by '+'" in err[0], err[0]
    assert "a file in methods/" in err[0] and "known methods: adam_atan2, " in err[0] and "z_loss" in err[0], err[0]
    assert not (tmp_path / "o").exists()
