"""scripts/reference_trainer.py (the plain nanoGPT-style yardstick for ``stabench speed``):
its main function, in-process at a tiny shape, eager, 3 timed steps."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "reference_trainer.py"
FIELDS = ["trainer", "d_model", "n_layers", "n_heads", "vocab", "batch", "seq_len", "compiled", "device",
          "torch", "steps", "tokens_per_second", "step_ms", "final_loss", "compile_seconds", "ops_per_step"]


@pytest.fixture(scope="module")
def reference():
    spec = importlib.util.spec_from_file_location("reference_trainer", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.timeout(60)
def test_reference_trainer_tiny(reference, tmp_path, capsys):
    out = tmp_path / "ref.jsonl"
    vocab = 256
    record = reference.main(["--d-model", "32", "--n-layers", "2", "--n-heads", "2", "--vocab", str(vocab),
                             "--batch", "4", "--seq", "32", "--steps", "3", "--warmup", "1",
                             "--device", "cpu", "--ops", "--out", str(out)])
    for field in FIELDS:
        assert field in record, field
    assert record["trainer"] == "reference" and record["compiled"] is False and record["device"] == "cpu"
    assert record["steps"] == 3 and record["compile_seconds"] is None
    assert record["tokens_per_second"] > 0 and record["step_ms"] > 0
    assert math.isfinite(record["final_loss"])
    assert abs(record["final_loss"] - math.log(vocab)) < 1.0
    assert isinstance(record["ops_per_step"], int) and record["ops_per_step"] > 0
    # one JSON line on stdout, the same line appended to --out
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [json.loads(line) for line in printed] == [record]
    assert [json.loads(line) for line in out.read_text().splitlines()] == [record]
