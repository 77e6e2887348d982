"""`stabench speed` times the real trainer on random tokens."""

import pytest

from stabench.cli import main
from stabench.speed import flops_per_token, throughput


def test_flops_per_token_counts_matmuls_and_attention():
    d, layers, vocab, seq = 64, 2, 1000, 128
    matmul_params = layers * 12 * d * d + d * vocab  # q k v out (4 d^2) + up/down (8 d^2) per layer, head
    assert flops_per_token(d, layers, vocab, seq) == 6 * matmul_params + 12 * layers * seq * d


def test_throughput_skips_warmup_rows():
    history = [{"step": 0, "tokens": 0}, {"step": 10, "tokens": 100, "time": 10.0},
               {"step": 20, "tokens": 200, "time": 11.0}, {"step": 30, "tokens": 300, "time": 12.0}]
    assert throughput(history, warmup=15) == pytest.approx(100.0)


def test_speed_command_prints_tokens_per_second(capsys, tmp_path):
    out = tmp_path / "speed.json"
    code = main(["speed", "smoke", "--shape", "16x1x1", "--steps", "12", "--warmup", "4", "--compile", "off",
                 "--batch", "4", "--seq", "16", "--vocab", "300", "--set", "train.probe_every=4", "--out", str(out)])
    assert code == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert "tok/s" in line and "eager" in line
    import json
    (row,) = json.loads(out.read_text())
    assert row["tokens_per_second"] > 0 and row["vocab"] == 300 and row["seq_len"] == 16
