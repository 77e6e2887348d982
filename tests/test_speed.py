"""`stabench speed` times the real trainer on random tokens."""

import pytest

from stabench.cli import main
from stabench.resources import flops_per_token
from stabench.speed import pack_lrs, throughput


def test_flops_per_token_counts_matmuls_and_attention():
    d, layers, vocab, seq = 64, 2, 1000, 128
    matmul_params = layers * 12 * d * d + d * vocab  # q k v out (4 d^2) + up/down (8 d^2) per layer, head
    assert flops_per_token({"d_model": d, "n_layers": layers}, vocab, seq) == 6 * matmul_params + 12 * layers * seq * d


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


def test_speed_command_measures_a_pack_and_its_ops(capsys, tmp_path):
    out = tmp_path / "speed.json"
    code = main(["speed", "smoke", "--shape", "16x1x1", "--steps", "12", "--warmup", "4", "--compile", "off",
                 "--batch", "4", "--seq", "16", "--vocab", "300", "--set", "train.probe_every=4", "--pack", "1", "3",
                 "--out", str(out)])
    assert code == 0
    import json
    one, three = json.loads(out.read_text())
    assert (one["pack"], three["pack"]) == (1, 3) and three["members_finished"] == 3
    assert three["tokens_per_second"] == pytest.approx(3 * three["tokens_per_second_per_member"])
    assert 0 < one["ops_per_step"] and 0 < three["ops_per_step"]
    assert "K=3" in capsys.readouterr().out


def test_pack_lrs_are_centred_and_stay_near_the_given_lr():
    lrs = pack_lrs(1e-3, 21)
    assert len(lrs) == 21 and lrs[10] == pytest.approx(1e-3)
    assert min(lrs) > 1e-4 and max(lrs) < 1e-2  # no member below min_lr or likely to diverge
