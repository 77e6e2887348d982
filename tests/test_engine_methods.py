"""The method contract (stabench.methods): loading, composing, arguments, errors; the z_loss
hook; and the rule that the engine names no method."""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

import pytest
import torch

from stabench.config import run_config
from stabench.methods import (
    EXCLUSIVE_HOOKS,
    MethodError,
    known_methods,
    load_method,
    load_module,
    load_stack,
)
from stabench.trainer import LossContext

REPO = Path(__file__).resolve().parent.parent
METHOD_NAMES = sorted(p.stem for p in (REPO / "methods").glob("*.py") if not p.stem.startswith("_"))

DOC = '"""A test method."""\nVERSION = "0"\n'


# ---- z_loss -------------------------------------------------------------------------------

def _logits(seed: int = 0, scale: float = 3.0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, 5, 11, generator=g) * scale + 4.0  # log Z far from 0
    targets = torch.randint(0, 11, (2, 5), generator=g)
    return logits, targets


@pytest.mark.parametrize("coef", [1e-4, 0.3])
def test_z_loss_hook_matches_formula(coef):
    method = load_method("z_loss", {"coef": coef})
    logits, targets = _logits()
    got = method.hook("loss")(LossContext(logits, targets), method.args)
    log_z = torch.stack([torch.log(torch.exp(row.double()).sum()) for row in logits.reshape(-1, 11)])
    want = coef * (log_z ** 2).mean()
    assert got.shape == ()
    assert got.item() == pytest.approx(want.item(), rel=1e-6)


def test_z_loss_default_coef_is_1e_4():
    assert load_method("z_loss").args == {"coef": 1e-4}


def test_z_loss_gradient_pushes_log_z_toward_zero():
    method = load_method("z_loss", {"coef": 1.0})
    logits, targets = _logits()
    logits.requires_grad_(True)
    method.hook("loss")(LossContext(logits, targets), method.args).backward()
    with torch.no_grad():
        before = torch.logsumexp(logits, -1).abs().mean()
        after = torch.logsumexp(logits - 1e-2 * logits.grad, -1).abs().mean()
    assert after < before


def test_loss_context_caches_log_z():
    logits, targets = _logits()
    ctx = LossContext(logits, targets)
    assert ctx.log_z is ctx.log_z
    torch.testing.assert_close(ctx.log_z, torch.logsumexp(logits, -1))


# ---- loading and composing ----------------------------------------------------------------

def test_shipped_methods_are_known_and_valid():
    assert set(METHOD_NAMES) <= set(known_methods())
    for name in METHOD_NAMES:
        module = load_module(name)
        assert (module.__doc__ or "").strip()
        assert isinstance(module.VERSION, str) and module.VERSION


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


@pytest.mark.parametrize("hook", EXCLUSIVE_HOOKS)
def test_exclusive_hook_conflict(tmp_methods, hook):
    src = DOC + f"def {hook}(*args):\n    raise AssertionError('never called')\n"
    a, b = tmp_methods(src, "excl_a"), tmp_methods(src, "excl_b")
    with pytest.raises(MethodError) as err:
        load_stack(f"{a}+{b}")
    msg = str(err.value)
    assert repr(hook) in msg and a in msg and b in msg
    # each alone is fine, and so is composing with a method that does not claim the hook
    assert load_stack(a).exclusive(hook)[0].__module__ == f"stabench_methods.{a}"
    assert load_stack(f"{a}+z_loss").names == [a, "z_loss"]


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
    config = run_config(bench, method="zl_strong", size="tiny", lr=1e-3, seed=0)
    assert config["method_spec"] == {"use": "qk_layernorm+z_loss", "args": {"z_loss": {"coef": 0.01}}}
    stack = load_stack(config["method_spec"]["use"], config["method_spec"]["args"])
    assert stack.describe()[1]["args"] == {"coef": 0.01}
    (hook, args), = stack.composed("loss")
    logits, targets = _logits()
    got = hook(LossContext(logits, targets), args)
    want = 0.01 * torch.logsumexp(logits, -1).square().mean()
    assert got.item() == pytest.approx(want.item(), rel=1e-6)


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


# ---- the engine names no method -----------------------------------------------------------

ENGINE_FILES = sorted((REPO / "stabench").glob("*.py")) + sorted((REPO / "stabench" / "data").glob("*.py"))


def _docstring_nodes(tree: ast.AST) -> set[int]:
    """Line numbers of module/class/function docstrings."""
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                lines.add(body[0].lineno)
    return lines


def _mentions(kind: str) -> list[str]:
    """Mentions of a method file name as a whole word in identifiers ('name') or string
    literals other than docstrings ('string'), across the engine's sources."""
    pattern = re.compile(r"(?<![A-Za-z0-9_])(" + "|".join(map(re.escape, METHOD_NAMES)) + r")(?![A-Za-z0-9_])")
    found = []
    for path in ENGINE_FILES:
        source = path.read_text()
        docstrings = _docstring_nodes(ast.parse(source))
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if kind == "name" and tok.type == tokenize.NAME and pattern.fullmatch(tok.string):
                found.append(f"{path.relative_to(REPO)}:{tok.start[0]}: {tok.string}")
            is_string = tok.type == tokenize.STRING or tok.type == getattr(tokenize, "FSTRING_MIDDLE", -1)
            if kind == "string" and is_string and tok.start[0] not in docstrings and pattern.search(tok.string):
                found.append(f"{path.relative_to(REPO)}:{tok.start[0]}: {tok.string}")
    return found


def test_method_names_found_and_engine_files_found():
    assert {"baseline", "qk_layernorm", "z_loss"} <= set(METHOD_NAMES)
    assert any(p.name == "trainer.py" for p in ENGINE_FILES)
    assert any(p.parent.name == "data" for p in ENGINE_FILES)


def test_engine_code_names_no_method():
    assert _mentions("name") == []


def test_engine_strings_name_no_method():
    assert _mentions("string") == []

