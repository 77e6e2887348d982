"""The typed method contract (stabench.contract, stabench.methods): loading, composing,
arguments, hook signatures checked at load, PACKABLE, param_options keys, the context object
that loss/on_step/probe hooks receive, the z_loss hook, methods/_template.py (every hook
documented; a copy trains exactly the baseline, K = 1 and K = 2), and the rule that the engine, the analysis and the workflow name no
method."""

from __future__ import annotations

import inspect
import io
import re
import shutil
import tokenize
import uuid
from pathlib import Path

import pytest
import torch

import stabench.cli as cli
from stabench.contract import EXCLUSIVE_HOOKS, HOOKS, PARAM_OPTION_KEYS, Context, signature_problem
from stabench.ensemble import Ensemble, build_member
from stabench.loop import train
from stabench.methods import (
    MethodError,
    known_methods,
    load_method,
    load_module,
    load_stack,
    param_options,
)
from stabench.runspec import resolve_run

from conftest import resolve

REPO = Path(__file__).resolve().parent.parent
METHOD_NAMES = sorted(p.stem for p in (REPO / "methods").glob("*.py") if not p.stem.startswith("_"))

DOC = '"""A test method."""\nVERSION = "0"\n'


def context(member_logits, targets, **kw) -> Context:
    k = len(member_logits)
    return Context(step=1, tokens=0, config={}, model=None, peak_lrs=(1e-3,) * k, seeds=(0,) * k,
                   cache={"member_logits": member_logits}, targets=targets, **kw)


def _logits(seed: int = 0, scale: float = 3.0, members: int = 2):
    g = torch.Generator().manual_seed(seed)
    logits = [torch.randn(2, 5, 11, generator=g) * scale + 4.0 * (k + 1) for k in range(members)]  # log Z far from 0
    targets = torch.randint(0, 11, (1, 2, 5), generator=g)
    return logits, targets


# ---- the context object -------------------------------------------------------------------

def test_context_caches_log_z_and_stacks_logits():
    logits, targets = _logits()
    ctx = context(logits, targets)
    assert ctx.members == 2
    assert ctx.log_z is ctx.log_z and ctx.log_z.shape == (2, 2, 5)
    torch.testing.assert_close(ctx.log_z, torch.stack([torch.logsumexp(x, -1) for x in logits]))
    assert ctx.logits is ctx.logits and ctx.logits.shape == (2, 2, 5, 11)
    torch.testing.assert_close(Context.member_mean(ctx.logits), torch.stack([x.mean() for x in logits]))
    assert ctx.loss is None and ctx.optimizer is None and ctx.grad_norm is None  # not there yet


def test_context_computes_member_logits_from_hidden_states_on_demand():
    """The training loss never materializes logits (stabench.readout); a hook that asks for them
    gets the readout of the hidden states, with grad."""
    from stabench.model import GPT
    torch.manual_seed(0)
    model = GPT(vocab_size=11, seq_len=5, d_model=8, n_layers=1, n_heads=2)
    idx = torch.randint(0, 11, (1, 2, 5))
    hidden, _ = model.features(idx)
    ctx = Context(step=1, tokens=0, config={}, model=model, peak_lrs=(1e-3,), seeds=(0,), hidden=hidden, targets=idx)
    assert "member_logits" not in ctx.cache
    torch.testing.assert_close(torch.stack(ctx.member_logits), model(idx))
    assert ctx.member_logits[0].requires_grad


# ---- z_loss -------------------------------------------------------------------------------

@pytest.mark.parametrize("coef", [1e-4, 0.3])
def test_z_loss_hook_matches_formula_per_member(coef):
    method = load_method("z_loss", {"coef": coef})
    logits, targets = _logits()
    got = method.hook("loss")(context(logits, targets), method.args)
    assert got.shape == (2,)
    for k, member in enumerate(logits):
        log_z = torch.stack([torch.log(torch.exp(row.double()).sum()) for row in member.reshape(-1, 11)])
        assert got[k].item() == pytest.approx((coef * (log_z ** 2).mean()).item(), rel=1e-6)


def test_z_loss_default_coef_is_1e_4():
    assert load_method("z_loss").args == {"coef": 1e-4}


def test_z_loss_gradient_pushes_log_z_toward_zero():
    method = load_method("z_loss", {"coef": 1.0})
    logits, targets = _logits(members=1)
    logits[0].requires_grad_(True)
    method.hook("loss")(context(logits, targets), method.args).sum().backward()
    with torch.no_grad():
        before = torch.logsumexp(logits[0], -1).abs().mean()
        after = torch.logsumexp(logits[0] - 1e-2 * logits[0].grad, -1).abs().mean()
    assert after < before


# ---- loading and composing ----------------------------------------------------------------

def test_shipped_methods_are_known_and_valid():
    assert set(METHOD_NAMES) <= set(known_methods())
    assert "_template" not in known_methods()
    for name in METHOD_NAMES:
        module = load_module(name)
        assert (module.__doc__ or "").strip()
        assert isinstance(module.VERSION, str) and module.VERSION
        for hook in HOOKS:
            if hasattr(module, hook):
                assert signature_problem(hook, getattr(module, hook)) is None, (name, hook)


def test_compose_two_methods():
    stack = load_stack("qk_layernorm+z_loss")
    assert stack.names == ["qk_layernorm", "z_loss"]
    described = stack.describe()
    assert [d["name"] for d in described] == ["qk_layernorm", "z_loss"]
    for d in described:
        assert d["version"] == load_module(d["name"]).VERSION
    assert described[1]["args"] == {"coef": 1e-4}
    assert [h.__module__ for h, _ in stack.composed("transform_model")] == ["stabench_methods.qk_layernorm"]
    assert [h.__module__ for h, _ in stack.composed("loss")] == ["stabench_methods.z_loss"]


def test_composed_hooks_run_in_order(tmp_methods):
    src = DOC + "def configure(config, args):\n    config.setdefault('order', []).append({tag!r})\n"
    a, b = tmp_methods(src.format(tag="a"), "ord"), tmp_methods(src.format(tag="b"), "ord")
    config = {}
    for hook, args in load_stack(f"{b}+{a}").composed("configure"):
        hook(config, args)
    assert config["order"] == ["b", "a"]


def test_unknown_method_did_you_mean():
    with pytest.raises(MethodError) as err:
        load_stack("baseline+qk_layrnorm")
    msg = str(err.value)
    assert "Did you mean 'qk_layernorm'" in msg
    assert "qk_layrnorm" in msg
    for name in METHOD_NAMES:
        assert name in msg
    assert "\n" not in msg


def test_unknown_method_without_close_match_lists_known():
    with pytest.raises(MethodError) as err:
        load_stack("zzzzzzzz")
    assert "Did you mean" not in str(err.value)
    assert all(name in str(err.value) for name in METHOD_NAMES)


@pytest.mark.parametrize("use, needle", [("z_loss+z_loss", "twice"), ("z_loss+", "empty"),
                                          ("z-loss", "not a valid")])
def test_bad_method_expressions(use, needle):
    with pytest.raises(MethodError, match=needle):
        load_stack(use)


def _hook_source(hook: str, body: str = "raise AssertionError('never called')") -> str:
    params = ", ".join(HOOKS[hook].signature.parameters)
    return f"def {hook}({params}):\n    {body}\n"


@pytest.mark.parametrize("hook", EXCLUSIVE_HOOKS)
def test_exclusive_hook_conflict(tmp_methods, hook):
    src = DOC + _hook_source(hook)
    a, b = tmp_methods(src, "excl_a"), tmp_methods(src, "excl_b")
    with pytest.raises(MethodError) as err:
        load_stack(f"{a}+{b}")
    msg = str(err.value)
    assert repr(hook) in msg and a in msg and b in msg
    # each alone is fine, and so is composing with a method that does not claim the hook
    assert load_stack(a).exclusive(hook)[0].__module__ == f"stabench_methods.{a}"
    assert load_stack(f"{a}+z_loss").names == [a, "z_loss"]


def test_exclusive_hooks_are_the_optimizer_batch_and_schedule():
    assert set(EXCLUSIVE_HOOKS) == {"update_rule", "transform_batch", "lr_schedule"}
    assert set(HOOKS) == {"configure", "transform_model", "param_options", "loss", "on_step", "probes",
                          "update_rule", "transform_batch", "lr_schedule"}


def test_unknown_method_argument_names_valid_ones():
    with pytest.raises(MethodError) as err:
        load_stack("z_loss", {"z_loss": {"coeff": 0.1}})
    msg = str(err.value)
    assert "coeff" in msg and "coef" in msg.replace("coeff", "")


def test_args_for_a_method_not_in_the_stack():
    with pytest.raises(MethodError, match="qk_layernorm"):
        load_stack("z_loss", {"qk_layernorm": {}})


def test_benchmark_args_reach_the_hook(engine_bench):
    bench = engine_bench.with_methods(
        ["baseline", {"label": "zl_strong", "use": "qk_layernorm+z_loss", "args": {"z_loss": {"coef": 0.01}}}])
    run = resolve_run(bench, method="zl_strong", size="tiny", lr=1e-3, seed=0)
    assert run.config["method_spec"] == {"use": "qk_layernorm+z_loss", "args": {"z_loss": {"coef": 0.01}}}
    assert run.config["methods"][1]["args"] == {"coef": 0.01}
    (hook, args), = run.stack.composed("loss")
    logits, targets = _logits()
    got = hook(context(logits, targets), args)
    want = torch.stack([0.01 * torch.logsumexp(x, -1).square().mean() for x in logits])
    torch.testing.assert_close(got, want)


def test_method_without_docstring_is_rejected(tmp_methods):
    name = tmp_methods('VERSION = "1"\n', "nodoc")
    with pytest.raises(MethodError, match="docstring"):
        load_stack(name)


def test_method_without_version_is_rejected(tmp_methods):
    name = tmp_methods('"""Has a docstring."""\n', "nover")
    with pytest.raises(MethodError, match="VERSION"):
        load_stack(name)


def test_method_with_non_string_version_is_rejected(tmp_methods):
    name = tmp_methods('"""Has a docstring."""\nVERSION = 2\n', "intver")
    with pytest.raises(MethodError, match="VERSION"):
        load_stack(name)


def test_invalid_method_is_rejected_every_time(tmp_methods):
    name = tmp_methods('VERSION = "1"\n', "nodoc_twice")
    for _ in range(2):
        with pytest.raises(MethodError, match="docstring"):
            load_stack(name)


def test_method_that_fails_to_import(tmp_methods):
    name = tmp_methods(DOC + "raise RuntimeError('boom')\n", "broken")
    for _ in range(2):  # not cached after a failed import
        with pytest.raises(MethodError, match="boom"):
            load_stack(name)


def test_methods_path_comes_first(tmp_methods):
    name = tmp_methods(DOC, "shadow")
    assert name in known_methods()


def test_methods_path_must_name_folders(monkeypatch, tmp_path):
    monkeypatch.setenv("STABENCH_METHODS_PATH", str(tmp_path / "nowhere"))
    with pytest.raises(MethodError, match="nowhere.*not a folder"):
        known_methods()


# ---- hook signatures, PACKABLE, param_options keys: checked when a method loads ------------------

WRONG_SIGNATURES = {
    "configure": "def configure(config):\n    pass\n",
    "transform_model": "def transform_model(model, config, args, extra):\n    pass\n",
    "param_options": "def param_options(model, args):\n    return {}\n",
    "loss": "def loss(logits, targets, args):\n    return 0.0\n",          # the pre-contract form
    "on_step": "def on_step(step, state, args):\n    pass\n",              # the pre-contract form
    "probes": "def probes():\n    return {}\n",
    "update_rule": "def update_rule(param_groups, config, args, more):\n    pass\n",
    "transform_batch": "def transform_batch(batch, step, config):\n    return batch\n",
    "lr_schedule": "def lr_schedule(step, config, args):\n    return 1.0\n",
}


@pytest.mark.parametrize("hook", sorted(HOOKS))
def test_a_hook_with_a_wrong_signature_fails_at_load(tmp_methods, hook):
    name = tmp_methods(DOC + WRONG_SIGNATURES[hook], "sig")
    expected = ", ".join(HOOKS[hook].signature.parameters)
    with pytest.raises(MethodError) as err:
        load_module(name)
    msg = str(err.value)
    assert "\n" not in msg and name in msg and repr(hook) in msg and f"({expected})" in msg
    # the right signature (defaults and other parameter names allowed) loads
    assert load_module(tmp_methods(DOC + _hook_source(hook, "pass"), "sig"))


def test_signature_rules():
    assert signature_problem("loss", lambda ctx, args: 0) is None
    assert signature_problem("loss", lambda c, a, extra=None: 0) is None  # an optional extra
    assert signature_problem("loss", lambda *args: 0) is None
    assert "must take (ctx, args)" in signature_problem("loss", lambda ctx: 0)
    assert "not a function" in signature_problem("loss", 3)


def test_a_hook_that_is_not_a_function_fails_at_load(tmp_methods):
    name = tmp_methods(DOC + "loss = 3\n", "notfn")
    with pytest.raises(MethodError, match="not a function"):
        load_module(name)


PROBE_SOURCE = DOC + """from stabench.contract import Probe
def probes(args):
    return {{"{name}": Probe(lambda ctx: {{}})}}
"""


def test_a_method_probe_under_an_engine_probe_name_fails_at_load(tmp_methods):
    name = tmp_methods(PROBE_SOURCE.format(name="grad_rms"), "probe_clash")
    with pytest.raises(MethodError) as err:
        load_stack(f"baseline+{name}")
    message = str(err.value)
    assert "\n" not in message and "probe 'grad_rms'" in message
    assert f"method {name!r}" in message and f"{name}.py" in message and "stabench.probes._grad_rms" in message


def test_two_methods_with_one_probe_name_fail_at_load_naming_both(tmp_methods):
    a, b = (tmp_methods(PROBE_SOURCE.format(name="mine"), stem) for stem in ("probe_a", "probe_b"))
    load_stack(a), load_stack(b)  # each alone is fine
    with pytest.raises(MethodError) as err:
        load_stack(f"{a}+{b}")
    message = str(err.value)
    assert "\n" not in message and "probe 'mine'" in message
    assert f"method {a!r}" in message and f"method {b!r}" in message and f"{a}.py" in message and f"{b}.py" in message


def test_packable_false_needs_a_reason(tmp_methods):
    name = tmp_methods(DOC + "PACKABLE = False\n", "nopack")
    with pytest.raises(MethodError) as err:
        load_module(name)
    assert "UNPACKABLE_REASON" in str(err.value) and name in str(err.value)
    ok = tmp_methods(DOC + "PACKABLE = False\nUNPACKABLE_REASON = 'it must see one LR'\n", "nopack")
    assert load_stack(ok).unpackable_reason() == f"{ok}: it must see one LR"
    assert load_stack("baseline").unpackable_reason() is None


def test_unknown_param_options_key_is_a_one_line_error(engine_bench, tmp_methods):
    name = tmp_methods(DOC + '''def param_options(model, config, args):
    return {"head.weight": {"lr_mult": 2.0, "weight_deacy": 0.0}}
''', "typo")
    run = resolve(engine_bench.benchmark, name)
    model = build_member(run.config, run.stack)
    with pytest.raises(MethodError) as err:
        param_options(model, run.config, run.stack)
    msg = str(err.value)
    assert "\n" not in msg
    assert repr(name) in msg and "head.weight" in msg and "'weight_deacy'" in msg
    assert "valid keys: " + ", ".join(PARAM_OPTION_KEYS) in msg
    assert set(PARAM_OPTION_KEYS) == {"lr_mult", "weight_decay", "eps", "trainable"}


def test_unknown_param_options_key_stops_the_cli_with_one_line(engine_bench, tmp_methods, tmp_path, capsys):
    name = tmp_methods(DOC + '''def param_options(model, config, args):
    return {"head.weight": {"weight_deacy": 0.0}}
''', "typo")
    code = cli.main(["train", str(engine_bench.path), "--method", name, "--size", "tiny", "--lr", "1e-3",
                     "--out", str(tmp_path / "run"), "--data", str(engine_bench.data_dir), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "weight_deacy" in err[0] and "valid keys" in err[0]
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_transform_must_keep_the_member_dimension(engine_bench, tmp_methods):
    name = tmp_methods(DOC + '''import torch
def transform_model(model, config, args):
    model.register_buffer("stray", torch.zeros(3))
''', "nodim")
    run = resolve(engine_bench.benchmark, name)
    with pytest.raises(MethodError, match="stray.*leading member dimension"):
        build_member(run.config, run.stack)


def test_members_built_differently_are_refused_naming_the_setting(engine_bench, tmp_methods):
    name = tmp_methods(DOC + '''def transform_model(model, config, args):
    for block in model.blocks:
        block.attn.scale = config["lr"]
''', "bylr")
    runs = [resolve(engine_bench.benchmark, name, lr=lr) for lr in (1e-3, 1e-2)]
    models = [build_member(r.config, r.stack) for r in runs]
    with pytest.raises(MethodError) as err:
        Ensemble(models, label=name)
    assert "blocks.0.attn.scale" in str(err.value) and "PACKABLE = False" in str(err.value)


# ---- methods/_template.py: every hook documented, inert as copied ---------------------------

TEMPLATE = REPO / "methods" / "_template.py"


def commented_hooks(source: str) -> dict[str, str]:
    """{hook: its code, uncommented} of the hooks the template documents as commented-out blocks
    (a block runs from '# def <hook>(' to the first empty line)."""
    found = {}
    for match in re.finditer(r"^# def (\w+)\(.*?(?=^$)", source, re.M | re.S):
        found[match[1]] = "\n".join(line[2:] for line in match[0].splitlines())
    return found


def test_template_documents_every_hook_with_its_signature_and_an_example():
    template = load_module_from(TEMPLATE)
    commented = commented_hooks(TEMPLATE.read_text())
    assert set(commented) <= set(HOOKS)
    for hook, spec in HOOKS.items():
        fn = getattr(template, hook, None)
        if spec.exclusive:  # defining one would replace an engine default and block composition
            assert fn is None, f"the template defines the exclusive hook {hook}"
            namespace = {}
            exec(compile("from __future__ import annotations\n" + commented[hook], hook, "exec"), namespace)
            fn = namespace[hook]
        assert list(inspect.signature(fn).parameters) == list(spec.signature.parameters), hook
        assert "Example" in inspect.getdoc(fn), hook
    for attr in ("VERSION", "ARGS", "CHANGES_LR_MEANING", "PACKABLE", "UNPACKABLE_REASON"):
        assert hasattr(template, attr), attr


def load_module_from(path: Path):
    import importlib.util
    spec = importlib.util.spec_from_file_location(f"template_{uuid.uuid4().hex[:6]}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_template_copied_under_a_new_name_trains_exactly_the_baseline(engine_bench, tmp_methods, tmp_path):
    name = tmp_methods(TEMPLATE.read_text(), "my_method")
    assert name in known_methods()
    bench = engine_bench.load(["train.steps=10", "train.probe_every=5", "train.eval_every=10"])
    for method in ("baseline", name):  # composes with methods that define every exclusive hook
        load_stack(f"{method}+seq_len_warmup+adam_atan2")
    for pack in (False, True):
        out = {}
        for method in ("baseline", name):
            runs = [resolve(bench, method, lr=lr) for lr in (1e-3, 1e-2)]
            assert runs[0].stack.unpackable_reason() is None
            dirs = [tmp_path / f"{method}-{pack}-{i}" for i in range(2)]
            metrics = train(runs, dirs, engine_bench.data_dir, progress=False, pack=pack)
            out[method] = [(m, (d / "losses.csv").read_text(), (d / "history.csv").read_text())
                           for m, d in zip(metrics, dirs)]
        for (mine, my_losses, my_history), (base, losses, history) in zip(out[name], out["baseline"]):
            assert my_losses == losses  # every step's loss, bitwise
            assert my_history.splitlines()[0] == history.splitlines()[0]  # no probe column added
            assert mine["final_val_loss"] == base["final_val_loss"]
            assert mine["probe_families"] == base["probe_families"]
            assert mine["methods"] == [{"name": name, "args": {}, "version": "1", "changes_lr_meaning": False}]


# ---- the engine, the analysis and the workflow name no method ---------------------------

def code_files(part: str) -> list[Path]:
    if part == "workflow":
        return [REPO / "Snakefile"] + sorted((REPO / "workflow").rglob("*.smk")) + \
            sorted((REPO / "workflow").rglob("*.py"))
    return sorted((REPO / part).rglob("*.py"))


def _is_docstring(tokens: list, i: int) -> bool:
    """A string that is a whole statement (a module/class/function docstring or a rule's)."""
    skip = (tokenize.NL, tokenize.COMMENT)
    j = i - 1
    while j >= 0 and tokens[j].type in skip:
        j -= 1
    k = i + 1
    while k < len(tokens) and tokens[k].type in skip:
        k += 1
    starts = j < 0 or tokens[j].type in (tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT)
    ends = k >= len(tokens) or tokens[k].type in (tokenize.NEWLINE, tokenize.ENDMARKER)
    return starts and ends


def mentions(files: list[Path]) -> list[str]:
    """Method file names as whole words in identifiers or in string literals that are not
    docstrings, across ``files`` (comments and docstrings may cite methods)."""
    pattern = re.compile(r"(?<![A-Za-z0-9_])(" + "|".join(map(re.escape, METHOD_NAMES)) + r")(?![A-Za-z0-9_])")
    found = []
    for path in files:
        tokens = list(tokenize.generate_tokens(io.StringIO(path.read_text()).readline))
        for i, tok in enumerate(tokens):
            is_string = tok.type == tokenize.STRING or tok.type == getattr(tokenize, "FSTRING_MIDDLE", -1)
            if (tok.type == tokenize.NAME and pattern.fullmatch(tok.string)) or \
                    (is_string and pattern.search(tok.string) and not _is_docstring(tokens, i)):
                found.append(f"{path.name}:{tok.start[0]}: {tok.string[:60]}")
    return found


def test_the_scan_finds_files_and_mentions(tmp_path):
    assert {"baseline", "qk_layernorm", "z_loss"} <= set(METHOD_NAMES)
    engine = {p.relative_to(REPO).as_posix() for p in code_files("stabench")}
    assert {"stabench/loop.py", "stabench/evaluation/adapter.py", "stabench/data/__init__.py"} <= engine
    assert {"Snakefile", "workflow/rules/train.smk", "workflow/rules/common.smk"} <= \
        {p.relative_to(REPO).as_posix() for p in code_files("workflow")}
    assert "analysis/diagnostics.py" in {p.relative_to(REPO).as_posix() for p in code_files("analysis")}
    # the scanner sees names and non-docstring strings, not docstrings or comments
    sample = tmp_path / "sample.py"
    sample.write_text('"""baseline in a docstring."""\n# z_loss in a comment\nx = "qk_layernorm"\nz_loss = 1\n'
                      'def f():\n    """baseline again."""\n    return f"{x} baseline"\n')
    tokens = list(tokenize.generate_tokens(io.StringIO(sample.read_text()).readline))
    docstrings = [t.string for i, t in enumerate(tokens) if t.type == tokenize.STRING and _is_docstring(tokens, i)]
    assert docstrings == ['"""baseline in a docstring."""', '"""baseline again."""']
    assert mentions([sample]) == ['sample.py:3: "qk_layernorm"', "sample.py:4: z_loss", 'sample.py:7: f"{x} baseline"']


@pytest.mark.parametrize("part", ["stabench", "workflow", "analysis"])
def test_code_names_no_method(part):
    assert mentions(code_files(part)) == []
