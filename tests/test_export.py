"""``stabench export``: a trained run becomes a transformers GPT-2 model with the same logits.

Each test trains a tiny run (conftest's engine benchmark, about a second), exports it, loads
it with ``transformers.AutoModelForCausalLM`` (no custom code) and compares its logits with
the stabench model's (``stabench.runs.load_run_model``) in float32.
"""

from __future__ import annotations

import json

import pytest
import torch

from stabench import cli
from stabench.export import ExportError, export_run
from stabench.runs import load_run_model, run_tokenizer

transformers = pytest.importorskip("transformers")

ATOL = RTOL = 1e-5


def hf_model(out):
    model, info = transformers.AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert type(model).__name__ == "GPT2LMHeadModel"
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs")), info
    return model.eval()


def assert_same_logits(run_dir, out, vocab: int, seq_len: int = 32):
    model, _ = load_run_model(run_dir)
    hf = hf_model(out)
    ids = torch.randint(0, vocab, (3, seq_len), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = model(ids[None])[0]
        got = hf(ids).logits
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, atol=ATOL, rtol=RTOL)
    return got


METHODS = {
    "baseline": "baseline",
    # attention scale 1/head_dim (folded into the queries), zero-initialized queries, muP readout
    "mup_full": "mup_full",
    # constant multipliers on embeddings and head (parametrize), base width below d_model = 32
    "everett16": {"label": "everett16", "use": "everett_mup", "args": {"everett_mup": {"base_width": 16}}},
    # a trained scalar gate on every matrix (parametrize)
    "wesar": "wesar",
    # the second block stays locked: the export has one block
    "depth1": {"label": "depth1", "use": "depth_warmup", "args": {"depth_warmup": {"start": 1000}}},
    # z-loss changes training only
    "z_loss": "z_loss",
}


@pytest.mark.parametrize("label", list(METHODS))
def test_export_gives_the_runs_logits(label, engine_bench, run_training, tmp_path):
    bench = engine_bench.with_methods(["baseline", METHODS[label]] if label != "baseline" else ["baseline"])
    metrics = run_training(tmp_path / "run", benchmark=bench, method=label)
    assert not metrics["diverged"]
    config = export_run(tmp_path / "run", tmp_path / "hf", data_dir=engine_bench.data_dir)
    assert config["n_layer"] == (1 if label == "depth1" else 2)
    assert_same_logits(tmp_path / "run", tmp_path / "hf", engine_bench.benchmark["data"]["vocab_size"])


def test_export_of_a_pack_member_is_that_members_model(engine_bench, train_pack, tmp_path):
    outs = [tmp_path / "a", tmp_path / "b"]
    train_pack(outs, [1e-3, 1e-2])
    vocab = engine_bench.benchmark["data"]["vocab_size"]
    logits = []
    for out in outs:
        export_run(out, out.with_name(out.name + "-hf"), data_dir=engine_bench.data_dir)
        logits.append(assert_same_logits(out, out.with_name(out.name + "-hf"), vocab))
    assert (logits[0] - logits[1]).abs().max() > 1e-2  # two members, two models


def test_exported_tokenizer_encodes_as_the_run(engine_bench, run_training, tmp_path):
    run_training(tmp_path / "run")
    export_run(tmp_path / "run", tmp_path / "hf", data_dir=engine_bench.data_dir)
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    tok = run_tokenizer(engine_bench.data_dir)
    text = "The cat sat on the mat, 1984.\nA second line."
    assert hf_tok(text, add_special_tokens=False)["input_ids"] == tok.encode(text, add_special_tokens=False).ids
    assert hf_tok.decode(tok.encode(text).ids) == tok.decode(tok.encode(text).ids)
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert hf_tok.eos_token_id == config["eos_token_id"] == tok.token_to_id("<|endoftext|>")
    assert hf_tok.model_max_length == config["n_positions"] == engine_bench.benchmark["train"]["seq_len"]


def test_qk_layernorm_is_refused_in_one_line(engine_bench, run_training, tmp_path, capsys):
    run_training(tmp_path / "run", method="qk_layernorm")
    with pytest.raises(ExportError, match="qk-layernorm"):
        export_run(tmp_path / "run", tmp_path / "hf", data_dir=engine_bench.data_dir)
    code = cli.main(["export", str(tmp_path / "run"), str(tmp_path / "hf"), "--data", str(engine_bench.data_dir)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "qk-layernorm" in err and err.startswith("stabench: error:")
    assert not (tmp_path / "hf" / "model.safetensors").exists()


def test_cli_export(engine_bench, run_training, tmp_path, capsys):
    run_training(tmp_path / "run")
    code = cli.main(["export", str(tmp_path / "run"), str(tmp_path / "hf"), "--data", str(engine_bench.data_dir)])
    assert code == 0
    assert "GPT2LMHeadModel" in capsys.readouterr().out
    assert {p.name for p in (tmp_path / "hf").iterdir()} >= {"config.json", "model.safetensors", "tokenizer.json",
                                                            "tokenizer_config.json", "stabench_export.json"}
    # without --data, outside the results layout: one line saying to give it
    assert cli.main(["export", str(tmp_path / "run"), str(tmp_path / "hf2")]) == 2
    assert "--data" in capsys.readouterr().err
