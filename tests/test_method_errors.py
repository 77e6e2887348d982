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
