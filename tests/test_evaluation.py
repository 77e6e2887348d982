"""Zero-shot evaluation (stabench/evaluation/): the lm-eval adapter, the offline tasks, the runner.

The adapter is checked against log-probabilities computed by hand with the GPT itself; the
tasks against the document split; the whole path through lm-eval's simple_evaluate on a tiny
trained run (the engine_bench fixture), offline.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
SEQ_LEN = 16


@pytest.fixture(scope="module")
def tokenizer(engine_bench):
    from stabench.runs import run_tokenizer
    return run_tokenizer(engine_bench.data_dir)


@pytest.fixture(scope="module")
def gpt(tokenizer):
    from stabench.model import GPT
    torch.manual_seed(0)
    return GPT(vocab_size=tokenizer.get_vocab_size(), seq_len=SEQ_LEN, d_model=16, n_layers=2, n_heads=2).eval()


@pytest.fixture(scope="module")
def lm(gpt, tokenizer):
    from stabench.evaluation.adapter import StabenchLM
    return StabenchLM(model=gpt, tokenizer=tokenizer, batch_size=3, device="cpu")


def request(kind: str, *args):
    from lm_eval.api.instance import Instance
    return Instance(request_type=kind, doc={}, arguments=tuple(args), idx=0)


@torch.no_grad()
def hand_logprobs(gpt, inp: list[int], targets: list[int]) -> tuple[float, bool]:
    """Sum of log p(targets) at the last len(targets) positions of one forward of inp."""
    logp = F.log_softmax(gpt(torch.tensor([[inp]]))[0, 0].float(), dim=-1)[len(inp) - len(targets):]
    t = torch.tensor(targets)
    return logp.gather(-1, t[:, None]).sum().item(), bool((logp.argmax(-1) == t).all())


def ids(tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False).ids


# ---------------------------------------------------------------------------- adapter
def test_registered_as_stabench():
    from lm_eval.api.registry import get_model

    from stabench.evaluation.adapter import StabenchLM
    assert get_model("stabench") is StabenchLM
    assert get_model("dummy").__name__ == "DummyLM"  # built-in models still resolve


def test_progress_false_draws_no_bar_whatever_lm_eval_asks(gpt, tokenizer, capsys):
    """``stabench eval`` in a log file: lm-eval calls loglikelihood without disable_tqdm, and its
    'Tokenizing inputs' bar and the model's own would fill the log with carriage returns."""
    from stabench.evaluation.adapter import StabenchLM
    quiet = StabenchLM(model=gpt, tokenizer=tokenizer, batch_size=3, device="cpu", progress=False)
    capsys.readouterr()
    quiet.loglikelihood([request("loglikelihood", "The city of", " Paris")])
    quiet.loglikelihood_rolling([request("loglikelihood_rolling", "A group is a set with an operation.")])
    quiet.generate_until([request("generate_until", "A", {"until": [], "max_gen_toks": 2})])
    assert capsys.readouterr().err == ""
    loud = StabenchLM(model=gpt, tokenizer=tokenizer, batch_size=3, device="cpu")
    loud.loglikelihood([request("loglikelihood", "The city of", " Paris")])
    assert "Tokenizing inputs" in capsys.readouterr().err  # the default is lm-eval's own


def test_loglikelihood_is_the_models_summed_logprob(lm, gpt, tokenizer):
    pairs = [("The city of", " Paris"), ("A group is", " a set with an operation"), ("It", " was")]
    got = lm.loglikelihood([request("loglikelihood", c, t) for c, t in pairs], disable_tqdm=True)
    for (context, continuation), (ll, greedy) in zip(pairs, got):
        whole, ctx = ids(tokenizer, context + continuation), ids(tokenizer, context)
        assert whole[:len(ctx)] == ctx
        want, want_greedy = hand_logprobs(gpt, whole[:-1], whole[len(ctx):])
        assert ll == pytest.approx(want, abs=1e-4)
        assert greedy == want_greedy
    # batching (sorting, right padding) changes nothing: one request at a time gives the same
    one = [lm.loglikelihood([request("loglikelihood", c, t)], disable_tqdm=True)[0] for c, t in pairs]
    assert [x[0] for x in one] == pytest.approx([x[0] for x in got], abs=1e-5)


def test_is_greedy(lm, gpt):
    ctx = [5, 17, 42, 99]
    with torch.no_grad():
        first = int(gpt(torch.tensor([[ctx]]))[0, 0, -1].argmax())
        second = int(gpt(torch.tensor([[ctx + [first]]]))[0, 0, -1].argmax())
    other = (first + 1) % 512
    (ll_g, g), (ll_2, g2), (ll_o, o), (_, mixed) = lm._loglikelihood_tokens(
        [(None, ctx, [first]), (None, ctx, [first, second]), (None, ctx, [other]), (None, ctx, [other, second])],
        disable_tqdm=True)
    assert g and g2 and not o and not mixed
    assert ll_g > ll_o


def test_long_context_is_left_truncated(lm, gpt):
    ctx, cont = list(range(1, 40)), [7, 8, 9]  # 42 tokens > seq_len 16
    (ll, _), = lm._loglikelihood_tokens([(None, ctx, cont)], disable_tqdm=True)
    want, _ = hand_logprobs(gpt, (ctx + cont)[-SEQ_LEN - 1:-1], cont)
    assert ll == pytest.approx(want, abs=1e-4)


def test_loglikelihood_rolling_is_the_sum_over_the_whole_text(lm, gpt, tokenizer):
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    short = "Paris is the capital of France."
    long = ("In mathematics, an abelian group, also called a commutative group, is a group in which the "
            "result of applying the group operation to two group elements does not depend on their order.")
    got = lm.loglikelihood_rolling([request("loglikelihood_rolling", short), request("loglikelihood_rolling", long)],
                                   disable_tqdm=True)
    # short text: one forward of [eos] + text scores every token
    toks = ids(tokenizer, short)
    assert len(toks) < SEQ_LEN
    assert got[0] == pytest.approx(hand_logprobs(gpt, [lm.eot_token_id] + toks[:-1], toks)[0], abs=1e-4)
    # long text: lm-eval's own rolling windows, each scored by hand, summed
    toks = ids(tokenizer, long)
    assert len(toks) > 2 * SEQ_LEN
    total = 0.0
    for ctx, cont in map(make_disjoint_window, get_rolling_token_windows(toks, lm.eot_token_id, SEQ_LEN, 1)):
        total += hand_logprobs(gpt, (ctx + cont)[:-1], cont)[0]
    assert got[1] == pytest.approx(total, abs=1e-3)


def test_generate_until_is_greedy_and_stops(lm, gpt, tokenizer):
    context = "The history of"
    toks = ids(tokenizer, context)
    greedy = []
    with torch.no_grad():
        for _ in range(6):
            nxt = int(gpt(torch.tensor([[(toks + greedy)[-SEQ_LEN:]]]))[0, 0, -1].argmax())
            if nxt == lm.eot_token_id:
                break
            greedy.append(nxt)
    full = tokenizer.decode(greedy)
    out = lm.generate_until([request("generate_until", context, {"until": ["\n\n"], "max_gen_toks": 6}),
                             request("generate_until", "A", {"until": [], "max_gen_toks": 3})], disable_tqdm=True)
    assert out[0] == full
    if len(full) > 1:  # a stop string cuts the text before it
        stop = full[len(full) // 2:]
        cut = lm.generate_until([request("generate_until", context, {"until": [stop], "max_gen_toks": 6})],
                                disable_tqdm=True)
        assert cut[0] == full[:full.index(stop)]


def test_model_args_string_wins_over_lm_eval_defaults(engine_bench, trained_run):
    from stabench.evaluation.adapter import StabenchLM
    lm = StabenchLM.create_from_arg_string(f"run_dir={trained_run},data_dir={engine_bench.data_dir},device=cpu,"
                                           "batch_size=5,at_init=True", {"batch_size": 1, "device": None})
    assert lm.batch_size == 5 and lm.at_init and str(lm.device) == "cpu"
    assert lm.max_length == 32  # the engine_bench seq_len


# ---------------------------------------------------------------------------- tasks
@pytest.fixture(scope="module")
def tasks_dir(engine_bench, tmp_path_factory):
    from stabench.evaluation.tasks import build_tasks
    out = tmp_path_factory.mktemp("eval_tasks")
    build_tasks(engine_bench.data_dir, out, n_examples=40, seed=0)
    return out


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_tasks_come_from_held_out_documents_only(engine_bench, tasks_dir):
    from stabench.data import load_documents, split_documents
    from stabench.data.prepare import docs_sha256
    data = engine_bench.benchmark["data"]
    train_docs, val_docs = split_documents(load_documents(data), data["val_fraction"], data["split_seed"])
    manifest = json.loads((tasks_dir / "manifest.json").read_text())
    assert manifest["val_docs_sha256"] == docs_sha256(val_docs)  # built from this very split
    norm = lambda t: " ".join(t.split())  # noqa: E731
    val, train = [norm(d) for d in val_docs], [norm(d) for d in train_docs]
    cloze = _rows(tasks_dir / "stabench_cloze.jsonl")
    cont = _rows(tasks_dir / "stabench_continuation.jsonl")
    assert 10 <= len(cloze) <= 40 and 10 <= len(cont) <= 40
    for ex in cloze:
        passage = ex["context"] + ex["target"]
        assert ex["target"].startswith(" ") and ex["target"].strip() and " " not in ex["target"][1:]
        assert passage in val[ex["doc_id"]]
        assert not any(passage in t for t in train)
    for ex in cont:
        assert len(ex["endings"]) == 4 and len(set(ex["endings"])) == 4
        true = ex["endings"][ex["label"]]
        assert ex["context"] in val[ex["doc_id"]] and f'{ex["context"]} {true}' in val[ex["doc_id"]]
        assert not any(ex["context"] in t for t in train)
        for e in ex["endings"]:
            assert any(e in v for v in val)  # distractors are held-out sentences too
    labels = {ex["label"] for ex in cont}
    assert len(labels) > 1  # the gold position is drawn, not fixed


def test_task_building_is_deterministic(engine_bench, tasks_dir, tmp_path):
    from stabench.evaluation.tasks import build_tasks
    build_tasks(engine_bench.data_dir, tmp_path / "again", n_examples=40, seed=0)
    build_tasks(engine_bench.data_dir, tmp_path / "other", n_examples=40, seed=1)
    for name in ("stabench_cloze.jsonl", "stabench_continuation.jsonl"):
        assert (tmp_path / "again" / name).read_bytes() == (tasks_dir / name).read_bytes()
    assert (tmp_path / "other" / "stabench_continuation.jsonl").read_bytes() != \
        (tasks_dir / "stabench_continuation.jsonl").read_bytes()
    yaml_text = (tasks_dir / "stabench_cloze.yaml").read_text()
    assert str((tasks_dir / "stabench_cloze.jsonl").resolve()) in yaml_text and "dataset_path: json" in yaml_text


# ---------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def trained_run(engine_bench, tmp_path_factory):
    from stabench.loop import train
    from stabench.runspec import resolve_run
    out = tmp_path_factory.mktemp("eval_run") / "baseline"
    run = resolve_run(engine_bench.benchmark, method="baseline", size="tiny", lr=1e-2, seed=0)
    train([run], [out], engine_bench.data_dir, progress=False)
    return out


@pytest.fixture
def offline(monkeypatch):
    """No network: hub datasets fail at once instead of retrying."""
    import datasets.config
    import huggingface_hub.constants
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)


def test_simple_evaluate_end_to_end_by_name(engine_bench, trained_run, tasks_dir, offline):
    import lm_eval
    from lm_eval.tasks import TaskManager

    import stabench.evaluation.adapter  # noqa: F401  registers "stabench"
    tm = TaskManager(include_path=str(tasks_dir), include_defaults=False)
    out = lm_eval.simple_evaluate(
        model="stabench", model_args=f"run_dir={trained_run},data_dir={engine_bench.data_dir},device=cpu,batch_size=8",
        tasks=["stabench_cloze", "stabench_continuation"], task_manager=tm, limit=20, bootstrap_iters=0)
    res = out["results"]
    assert 0 <= res["stabench_cloze"]["acc,none"] <= 1 and res["stabench_cloze"]["perplexity,none"] > 1
    assert 0 <= res["stabench_continuation"]["acc_norm,none"] <= 1
    assert out["n-samples"]["stabench_cloze"]["effective"] == 20


def test_runner_scores_skips_unavailable_tasks_and_compares_with_init(engine_bench, trained_run, tasks_dir,
                                                                      offline, tmp_path):
    from stabench.evaluation.runner import evaluate_runs, write_record
    rec = evaluate_runs([trained_run], data_dir=engine_bench.data_dir, tasks_dir=tasks_dir,
                        tasks=["stabench_cloze", "stabench_continuation", "lambada_openai", "hellaswg"],
                        init_tasks=["stabench_cloze"], limit=20, batch_size=8, device="cpu")
    write_record(rec, tmp_path / "eval.json")
    rec = json.loads((tmp_path / "eval.json").read_text())
    assert rec["status"] == "evaluated" and rec["settings"]["hub"] == "offline"
    assert rec["tasks"]["lambada_openai"]["status"] == "skipped"
    assert "cannot load" in rec["tasks"]["lambada_openai"]["reason"]
    assert "did you mean 'hellaswag'" in rec["tasks"]["hellaswg"]["reason"]
    s = rec["scores"]
    for key in ("stabench_cloze/acc", "stabench_cloze/ll", "stabench_cloze/perplexity",
                "stabench_continuation/acc", "stabench_continuation/acc_norm",
                "stabench_cloze/init_ll", "stabench_cloze/init_acc"):
        assert key in s and math.isfinite(s[key])
    assert s["stabench_cloze/ll"] == pytest.approx(-math.log(s["stabench_cloze/perplexity"]))
    assert s["stabench_cloze/ll"] > s["stabench_cloze/init_ll"]  # training taught it something


def test_lm_eval_cli_wrapper(engine_bench, trained_run, tasks_dir, tmp_path):
    env = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HOME": str(Path.home())}
    proc = subprocess.run(
        [sys.executable, "-m", "stabench.evaluation.lm_eval_cli", "--model", "stabench",
         "--model_args", f"run_dir={trained_run},data_dir={engine_bench.data_dir},device=cpu,batch_size=8",
         "--include_path", str(tasks_dir), "--tasks", "stabench_cloze", "--limit", "5",
         "--output_path", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=300, cwd=REPO, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "stabench_cloze" in proc.stdout and "perplexity" in proc.stdout
    assert list((tmp_path / "out").rglob("results_*.json"))


# ---------------------------------------------------------------------------- selection and analysis
def _fake_run(root: Path, lr: float, seed: int, loss: float, diverged: bool = False) -> Path:
    d = root / f"lr{lr:g}-s{seed}"
    d.mkdir(parents=True)
    (d / "metrics.json").write_text(json.dumps({
        "method": "m", "size": "s", "lr": lr, "seed": seed, "final_val_loss": loss, "init_loss": 6.0,
        "diverged": diverged, "config": {"model": {"vocab_size": 403}}}))  # l0 = ln 403 ~ 6.0
    return d


def test_best_run_selection(tmp_path):
    from stabench.evaluation.runner import select_best
    runs = [_fake_run(tmp_path, 1e-3, 0, 5.0), _fake_run(tmp_path, 1e-2, 0, 4.0), _fake_run(tmp_path, 1e-2, 1, 4.2),
            _fake_run(tmp_path, 1e-1, 0, 3.0, diverged=True), _fake_run(tmp_path, 3e-1, 0, float("nan"))]
    chosen, cands = select_best(runs)
    assert chosen == str(runs[1]) and len(cands) == 5
    assert [c["diverged"] for c in cands] == [False, False, False, True, True]
    all_div = [_fake_run(tmp_path / "x", 1e-1, 0, 3.0, diverged=True)]
    assert select_best(all_div)[0] is None


def test_diverged_run_is_not_evaluated(tmp_path):
    from stabench.evaluation.runner import evaluate_runs
    run = _fake_run(tmp_path, 1.0, 0, 9.0, diverged=True)
    rec = evaluate_runs([run], data_dir=tmp_path, tasks_dir=None, tasks=["stabench_cloze"])
    assert rec["status"] == "diverged" and rec["scores"] == {}
    rec = evaluate_runs([run], data_dir=tmp_path, tasks_dir=None, tasks=["stabench_cloze"], select="best")
    assert rec["status"] == "all_diverged" and rec["run_dir"] is None
