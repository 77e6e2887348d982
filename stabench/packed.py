"""Packed sweeps: the runs of one (method, size) that differ only in peak LR or seed, trained
together in one process as a batched ensemble, so that a grid of tiny models fills a GPU.

``train_packed(configs, out_dirs, data_dir)`` trains K such runs at once and writes, for each,
the same result folder ``train_run`` writes (metrics.json, history.csv, checkpoint.pt), so the
workflow and the analysis cannot tell a packed run from a separate one, except for the extra
metric ``packed_with`` (K). Each member k is exactly the run ``train_run(configs[k])`` would
train, up to float reduction order:

- its own init (its seed, then the methods' ``transform_model`` hooks) and its own batches
  (``train_batch`` with its seed: members that share a seed share the batch tensor);
- one forward/backward for all: ``torch.func.functional_call`` of a skeleton model under
  ``torch.vmap`` over the stacked weights; the per-member losses are summed before backward,
  which gives every member its own gradient (members never mix);
- its own LR schedule (peak lr_k), AdamW on the packed weights (below), global-norm clipping
  over its own gradient, its own loss accumulators, probes and divergence check.

The packed state. All trainable weights of member k are one row of a (K, N) leaf tensor
``flat``; the model sees views of it (``torch.split`` along N, so the backward is one
concatenation, and ``flat.grad`` is (K, N)). AdamW is a handful of element-wise ops on (K, N)
tensors with the per-element options of ``stabench.optim.param_groups`` computed on each
member's own model (``lr_mult``, weight decay including the independent form
wd / (peak_k * lr_mult), ``eps``; methods' ``param_options`` hooks are honoured, and
``trainable: False`` weights stay out of ``flat``). Clipping is a per-row norm.

Each member keeps its real ``GPT`` module, whose parameters alias its row of ``flat`` (no
copy), and a ``torch.optim.AdamW`` that is never stepped but whose state holds views of its
rows of the moments. On probe steps (only: no host sync on other steps) the member's grads,
captured attention maxima and logits are attached to it and ``stabench.probes.run_probes``
runs as in ``train_run``, so history.csv has the same columns, and checkpoints hold the member
model's plain ``state_dict`` and the optimizer's ``state_dict`` in torch's AdamW format.

Divergence: a member whose probed loss is non-finite or above ``diverge_factor`` x its init
loss is finished right there (final evaluation, metrics, checkpoint, as ``train_run`` does) and
its row is dropped from the pack: the remaining members are re-stacked, so a diverged member is
frozen, costs nothing afterwards, and its NaNs cannot reach the others (they never could: the
rows do not interact).

Resume: every ``checkpoint_every`` steps each member writes a checkpoint in ``train_run``'s
format. A rerun reports finished members, resumes members whose checkpoints stopped at the
same step as one pack, and starts the rest from scratch as another pack; a group of one is
handed to ``train_run``, which resumes from the same checkpoint format.

Not packable (``can_pack`` says why; ``train_packed`` then calls ``train_run`` for each config
in turn): methods with an exclusive hook (``build_optimizer``, ``transform_batch``,
``lr_schedule``) or ``on_step``, a single run, and multi-process launches. Loss hooks run
inside ``vmap`` with each member's logits: they must not branch on tensor values in Python.
``train.compile`` is ignored by packs (torch.compile is not applied to the vmapped step).
A weight that gets no gradient in a step (an unused block) gets a zero gradient here, so AdamW
still decays it and moves it by its old moments, where torch's AdamW would skip it: methods
that leave weights unused (depth schedules) are ``on_step`` methods and are not packed anyway.
"""

from __future__ import annotations

import copy
import json
import math
import sys
import time
import warnings
from collections import defaultdict
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from torch.func import functional_call
from tqdm.auto import tqdm

from .checkpoint import config_hash, load_checkpoint, save_checkpoint
from .data import load_data, train_batch, val_windows
from .io import write_csv, write_json
from .methods import EXCLUSIVE_HOOKS, MethodStack, load_stack
from .model import GPT
from .optim import learning_rate, param_groups
from .probes import ProbeContext, run_probes
from .trainer import (HISTORY_NAME, LossContext, METRICS_NAME, check_data, cross_entropy, is_probe_step, prepare_config, resolve_device, run_metrics, train_grad_clip, train_run)

PACK_VARIES = ("lr", "seed")
UNPACKABLE_HOOKS = EXCLUSIVE_HOOKS + ("on_step",)


# ---- which runs can share a pack ----------------------------------------------------------

def _identity(config: Mapping, vary: Sequence[str] = PACK_VARIES) -> str:
    return json.dumps({k: v for k, v in config.items() if k not in vary}, sort_keys=True, default=str)


def check_packable(configs: Sequence[dict]) -> None:
    """Raise ValueError unless the configs differ only in ``lr`` and ``seed``."""
    if not configs:
        raise ValueError("train_packed: no configs given")
    first = _identity(configs[0])
    for i, config in enumerate(configs[1:], 1):
        if _identity(config) != first:
            keys = sorted(k for k in set(config) | set(configs[0])
                          if k not in PACK_VARIES and config.get(k) != configs[0].get(k))
            raise ValueError(f"train_packed: config {i} differs from config 0 in {', '.join(keys)}; "
                             f"a pack may only differ in {' and '.join(PACK_VARIES)}")
    pairs = [(c["lr"], c["seed"]) for c in configs]
    if len(set(pairs)) != len(pairs):
        raise ValueError("train_packed: the same (lr, seed) appears twice in one pack")


def can_pack(configs: Sequence[dict]) -> tuple[bool, str]:
    """(True, '') when ``configs`` can be trained as one pack, else (False, why not)."""
    try:
        check_packable(configs)
    except ValueError as exc:
        return False, str(exc)
    if len(configs) < 2:
        return False, "a single run: nothing to pack"
    spec = configs[0]["method_spec"]
    stack = load_stack(spec["use"], spec["args"])
    hooks = [f"{m.name}.{hook}" for m in stack.methods for hook in UNPACKABLE_HOOKS if m.hook(hook)]
    if hooks:
        return False, (f"method {configs[0]['method']!r} has hook(s) {', '.join(hooks)}, which act per run "
                       "outside the batched step")
    if _reparameterized(configs[0], stack):
        return False, (f"method {configs[0]['method']!r} reparameterizes weights (torch.nn.utils.parametrize), "
                       "which the batched step does not reproduce exactly")
    try:
        from accelerate.state import PartialState
        if PartialState().num_processes > 1:
            return False, "a multi-process launch (packs run in one process)"
    except Exception:  # noqa: BLE001 (no accelerate state: one process)
        pass
    return True, ""


def _reparameterized(config: dict, stack: MethodStack) -> bool:
    """Whether the method's transform_model wraps weights in parametrizations (checked on a
    copy of the model with a tiny vocabulary, so it costs little)."""
    from torch.nn.utils import parametrize

    if not stack.composed("transform_model"):
        return False
    probe = copy.deepcopy(config)
    probe["model"].update(vocab_size=8, seq_len=probe["train"]["seq_len"])
    model = GPT(**probe["model"])
    for hook, args in stack.composed("transform_model"):
        hook(model, probe, args)
    return any(parametrize.is_parametrized(m) for m in model.modules())


def pack_groups(run_specs: Iterable[Any], max_size: int = 8, *, vary: Sequence[str] = PACK_VARIES,
                ignore: Sequence[str] = ("out", "out_dir", "run_dir", "path")) -> list[list[Any]]:
    """Group run specs (mappings or dataclasses, e.g. run configs or {method, size, lr, seed})
    by everything except ``vary`` (lr, seed) and ``ignore`` (output paths).

    Groups keep the order of first appearance and the specs' order inside; a group larger
    than ``max_size`` is split into the fewest packs of near-equal size (10 with max 8: 5 + 5;
    10 with max 4: 4 + 3 + 3).
    Whether a group can actually be packed (its method's hooks) is ``can_pack``'s call.
    """
    if max_size < 1:
        raise ValueError(f"pack_groups: max_size must be >= 1, got {max_size}")
    groups: dict[str, list] = {}
    for spec in run_specs:
        fields = asdict(spec) if is_dataclass(spec) else dict(spec)
        key = _identity({k: v for k, v in fields.items() if k not in ignore}, vary)
        groups.setdefault(key, []).append(spec)
    packs = []
    for members in groups.values():
        n_packs = math.ceil(len(members) / max_size)
        small, extra = divmod(len(members), n_packs)
        start = 0
        for i in range(n_packs):
            size = small + (i < extra)
            packs.append(members[start:start + size])
            start += size
    return packs


# ---- one member of a pack -----------------------------------------------------------------

@dataclass
class _Member:
    index: int                      # position in train_packed's configs
    config: dict                    # prepared (vocab size, configure hooks)
    out_dir: Path
    stack: MethodStack
    fingerprint: str
    state: dict | None              # an unfinished checkpoint to resume from
    model: GPT | None = None        # its parameters alias the member's row of the packed weights
    optimizer: torch.optim.AdamW | None = None  # never stepped: its state aliases the packed moments
    options: dict = field(default_factory=dict)  # param name -> (lr_mult, weight_decay, eps)
    history: list = field(default_factory=list)
    init_loss: float = float("nan")
    extra_probes: dict = field(default_factory=dict)
    diverged_at: int | None = None
    train_seconds: float = 0.0
    elapsed: float = 0.0
    start_tokens: int = 0
    start_seconds: float = 0.0
    final: dict | None = None       # the final evaluation, when done at the last step
    metrics: dict | None = None


def _set_tensor(module: nn.Module, name: str, value: torch.Tensor) -> None:
    """Point ``module``'s parameter or buffer ``name`` (dotted) at the storage of ``value``."""
    *path, leaf = name.split(".")
    owner = module.get_submodule(".".join(path)) if path else module
    current = owner._parameters.get(leaf) if leaf in owner._parameters else owner._buffers.get(leaf)
    current.data = value


class _Pack:
    """The stacked weights, moments and per-element AdamW options of the active members."""

    def __init__(self, members: list[_Member], device: torch.device):
        self.members, self.device = members, device
        model = members[0].model
        self.names = [n for n, p in model.named_parameters() if p.requires_grad]
        self.fixed_names = [n for n, p in model.named_parameters() if not p.requires_grad]
        self.buffer_names = [n for n, _ in model.named_buffers()]
        shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
        self.shapes = [shapes[n] for n in self.names]
        self.sizes = [math.prod(s) for s in self.shapes]
        for m in members[1:]:
            theirs = {n: (tuple(p.shape), p.requires_grad) for n, p in m.model.named_parameters()}
            ours = {n: (tuple(p.shape), p.requires_grad) for n, p in model.named_parameters()}
            if theirs != ours or [n for n, _ in m.model.named_buffers()] != self.buffer_names:
                raise ValueError("train_packed: the members' models differ in their parameters; "
                                 "a method's transform_model or param_options depends on lr or seed")
        with torch.no_grad():
            self.flat = torch.stack([self._row(m, dict(m.model.named_parameters()).__getitem__)
                                     for m in members]).requires_grad_(True)
            self.exp_avg = torch.zeros_like(self.flat, requires_grad=False)
            self.exp_avg_sq = torch.zeros_like(self.flat, requires_grad=False)
            for row, m in enumerate(members):
                if m.state is not None:  # resume: the moments from the member's torch AdamW state
                    opt_state = m.optimizer.state
                    params = dict(m.model.named_parameters())
                    self.exp_avg[row] = self._row(m, lambda n: opt_state[params[n]]["exp_avg"])
                    self.exp_avg_sq[row] = self._row(m, lambda n: opt_state[params[n]]["exp_avg_sq"])
                    m.optimizer.state.clear()
            self.fixed = {}
            for name in self.fixed_names:
                self.fixed[name] = torch.stack([dict(m.model.named_parameters())[name].detach() for m in members])
            for name in self.buffer_names:
                self.fixed[name] = torch.stack([dict(m.model.named_buffers())[name].detach() for m in members])
        self.lr_mult = self._option(0)
        self.weight_decay = self._option(1)
        self.eps = self._option(2)
        self.alias()

    def _row(self, member: _Member, tensor_of) -> torch.Tensor:
        return torch.cat([tensor_of(n).detach().reshape(-1).to(self.device, torch.float32) for n in self.names])

    def _option(self, which: int) -> torch.Tensor | float:
        """One AdamW option per element: a float if constant, else (1, N) or (K, N)."""
        per_member = [[m.options[n][which] for n in self.names] for m in self.members]
        values = {v for row in per_member for v in row}
        if len(values) == 1:
            return float(values.pop())
        rows = per_member[:1] if all(r == per_member[0] for r in per_member) else per_member
        sizes = torch.tensor(self.sizes, device=self.device)
        return torch.stack([torch.repeat_interleave(torch.tensor(r, dtype=torch.float32, device=self.device), sizes)
                            for r in rows])

    def views(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """name -> (K, *shape) view of a (K, N) tensor (weights, grads, moments), or (*shape) of a row."""
        lead = flat.shape[:-1]
        chunks = torch.split(flat, self.sizes, dim=-1)
        return {n: c.view((*lead, *s)) for n, c, s in zip(self.names, chunks, self.shapes)}

    def alias(self) -> None:
        """Make every member's model parameters views of its row (after (re)stacking)."""
        data = self.flat.detach()
        for row, m in enumerate(self.members):
            for name, view in self.views(data[row]).items():
                _set_tensor(m.model, name, view)
            for name, stacked in self.fixed.items():
                _set_tensor(m.model, name, stacked[row])

    def keep(self, rows: list[int]) -> None:
        """Drop every member not in ``rows`` (diverged ones) from the pack."""
        index = torch.tensor(rows, device=self.device)
        with torch.no_grad():
            self.flat = self.flat.detach().index_select(0, index).requires_grad_(True)
            self.exp_avg = self.exp_avg.index_select(0, index)
            self.exp_avg_sq = self.exp_avg_sq.index_select(0, index)
            self.fixed = {n: t.index_select(0, index) for n, t in self.fixed.items()}
            for attr in ("lr_mult", "weight_decay", "eps"):
                value = getattr(self, attr)
                if isinstance(value, torch.Tensor) and value.shape[0] == len(self.members) > 1:
                    setattr(self, attr, value.index_select(0, index))
        self.members = [self.members[r] for r in rows]
        self.alias()

    @torch.no_grad()
    def adamw_(self, lr: torch.Tensor, step: int, betas: tuple[float, float]) -> None:
        """One AdamW step (torch's formula) on every row; ``lr`` is (K,) schedule values."""
        beta1, beta2 = betas
        grad, param = self.flat.grad, self.flat
        lr = lr[:, None] * self.lr_mult
        param.mul_(1 - lr * self.weight_decay)
        self.exp_avg.lerp_(grad, 1 - beta1)
        self.exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        bias1, bias2 = 1 - beta1 ** step, 1 - beta2 ** step
        denom = (self.exp_avg_sq.sqrt() / math.sqrt(bias2)).add_(self.eps)
        param.sub_((lr / bias1) * self.exp_avg / denom)

    def attach(self, row: int, step: int, lrs: list[float], with_grads: bool = True) -> None:
        """Give member ``row``'s model its grads and its optimizer the packed moments (probes, checkpoints)."""
        m = self.members[row]
        params = dict(m.model.named_parameters())
        grads = self.views(self.flat.grad[row]) if with_grads and self.flat.grad is not None else {}
        m_views, v_views = self.views(self.exp_avg[row]), self.views(self.exp_avg_sq[row])
        for name in self.names:
            p = params[name]
            p.grad = grads.get(name)
            m.optimizer.state[p] = {"step": torch.tensor(float(step)), "exp_avg": m_views[name],
                                    "exp_avg_sq": v_views[name]}
        for group in m.optimizer.param_groups:
            group["lr"] = lrs[row] * group["lr_mult"]

    def detach_member(self, row: int) -> None:
        m = self.members[row]
        for p in m.model.parameters():
            p.grad = None
        m.optimizer.state.clear()


# ---- training -----------------------------------------------------------------------------

def _build_member(member: _Member, device: torch.device) -> None:
    config = member.config
    torch.manual_seed(config["seed"])
    model = GPT(**config["model"])
    for hook, args in member.stack.composed("transform_model"):
        hook(model, config, args)
    model.to(device)
    groups = param_groups(model, config, member.stack)  # also freezes trainable: False weights
    opt_cfg = config["optimizer"]
    member.optimizer = torch.optim.AdamW(groups, lr=config["lr"], betas=tuple(opt_cfg["betas"]), eps=opt_cfg["eps"])
    member.options = {n: (g["lr_mult"], g["weight_decay"], g["eps"]) for g in groups for n in g["names"]}
    member.extra_probes = {name: fn for hook, args in member.stack.composed("probes")
                           for name, fn in hook(args).items()}
    member.model = model
    if member.state is not None:
        model.load_state_dict(member.state["model"])
        member.optimizer.load_state_dict(member.state["optimizer"])


# CPU's flash-attention kernel has no vmap batching rule (CUDA's flash, efficient and cuDNN
# kernels have): vmap then loops over the members, which is correct; the warning is noise.
_NO_SDPA_BATCH_RULE = "There is a performance drop because we have not yet implemented the batching rule"


def _vmap(fn, in_dims):
    def call(*args):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_NO_SDPA_BATCH_RULE)
            return torch.vmap(fn, in_dims=in_dims)(*args)
    return call


def _clone_cpu(tree: Any) -> Any:
    if isinstance(tree, torch.Tensor):
        return tree.detach().to("cpu", copy=True).contiguous()
    if isinstance(tree, dict):
        return {k: _clone_cpu(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_clone_cpu(v) for v in tree)
    return tree


def train_packed(configs: list[dict], out_dirs: list[Path], data_dir: Path, *, progress: bool = True) -> list[dict]:
    """Train runs that differ only in lr and/or seed as one batched pack; return their metrics
    in the order of ``configs``. Falls back to ``train_run`` per config when they cannot be
    packed (see ``can_pack``); raises ValueError when they differ in anything else."""
    check_packable(configs)
    if len(out_dirs) != len(configs):
        raise ValueError(f"train_packed: {len(configs)} configs but {len(out_dirs)} output folders")
    out_dirs = [Path(o) for o in out_dirs]
    if len({o.resolve() for o in out_dirs}) != len(out_dirs):
        raise ValueError("train_packed: two runs of the pack share an output folder")
    ok, _why = can_pack(configs)
    if not ok:
        return [train_run(c, o, data_dir, progress=progress) for c, o in zip(configs, out_dirs)]

    start_time = time.perf_counter()
    data_dir = Path(data_dir)
    data = load_data(data_dir)
    results: list[dict | None] = [None] * len(configs)
    by_step: dict[int, list[_Member]] = defaultdict(list)
    for i, (config, out_dir) in enumerate(zip(configs, out_dirs)):
        out_dir.mkdir(parents=True, exist_ok=True)
        stack = load_stack(config["method_spec"]["use"], config["method_spec"]["args"])
        check_data(data.manifest, config, data_dir)
        prepared = prepare_config(config, stack, data.vocab_size)
        prepared["train"]["world_size"] = 1  # a pack is one process (as train_run records it)
        fingerprint = config_hash(prepared)
        state = load_checkpoint(out_dir, fingerprint)
        if state is not None and state.get("finished"):
            write_json(out_dir / METRICS_NAME, state["metrics"])  # already computed: never lose it
            write_csv(out_dir / HISTORY_NAME, state["history"])
            results[i] = state["metrics"]
            continue
        by_step[state["step"] if state else 0].append(_Member(i, prepared, out_dir, stack, fingerprint, state))
    for group in by_step.values():
        if len(group) == 1:  # nothing to pack with: train_run resumes the same checkpoint format
            m = group[0]
            results[m.index] = train_run(configs[m.index], m.out_dir, data_dir, progress=progress)
            continue
        for m in _train_pack(group, data, start_time, progress):
            results[m.index] = m.metrics
        start_time = time.perf_counter()  # the next group's wall time starts here
    return results


def _train_pack(members: list[_Member], data, start_time: float, progress: bool) -> list[_Member]:
    config0 = members[0].config
    train, opt_cfg = config0["train"], config0["optimizer"]
    device_kind, precision = resolve_device(config0)
    device = torch.device(device_kind)
    K = len(members)
    betas = tuple(float(b) for b in opt_cfg["betas"])
    max_norm = train_grad_clip(config0)
    batch_size, seq_len, total_steps = train["batch_size"], train["seq_len"], train["steps"]

    def autocast():
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=precision == "bf16")

    for m in members:
        _build_member(m, device)
    skeleton = copy.deepcopy(members[0].model).to("meta")  # structure only; weights come from the pack
    pack = _Pack(members, device)
    loss_hooks = members[0].stack.composed("loss")
    captured_layers: list[int] = []

    def member_forward(params, fixed, inputs, capture: bool):
        skeleton.capture(capture)
        with autocast():
            logits = functional_call(skeleton, {**params, **fixed}, (inputs,))
        maxes = logits.new_zeros(0, dtype=torch.float32)
        if capture:
            layers = skeleton.attention_max_logits()
            captured_layers[:] = [i for i, t in enumerate(layers) if t is not None]
            maxes = torch.stack([layers[i].float() for i in captured_layers])
        return logits, maxes

    def member_loss(params, fixed, batch, capture: bool):
        logits, maxes = member_forward(params, fixed, batch[:, :-1], capture)
        targets = batch[:, 1:]
        lm_loss = loss = cross_entropy(logits, targets)
        if loss_hooks:
            ctx = LossContext(logits, targets)
            loss = loss + sum(hook(ctx, args) for hook, args in loss_hooks)
        return loss, lm_loss, logits, maxes

    def member_eval(params, fixed, batch):
        logits, maxes = member_forward(params, fixed, batch[:, :-1], True)
        n = batch.shape[0]
        return (cross_entropy(logits, batch[:, 1:]) * n, torch.logsumexp(logits.float(), dim=-1).mean() * n, maxes)

    windows = torch.from_numpy(val_windows(data.val, train["eval_windows"], seq_len).astype(np.int64))

    @torch.no_grad()
    def evaluate(rows: list[int]) -> list[dict]:
        """train_run's ``evaluate`` for the pack rows ``rows``, in one vmapped pass per chunk."""
        index = torch.tensor(rows, device=device)
        flat = pack.flat.detach().index_select(0, index)
        params = pack.views(flat)
        fixed = {n: t.index_select(0, index) for n, t in pack.fixed.items()}
        losses, log_z, layer_max = [], [], None
        for start in range(0, len(windows), train["eval_batch_size"]):
            batch = windows[start:start + train["eval_batch_size"]].to(device)
            ce, lz, maxes = _vmap(member_eval, (0, 0, None))(params, fixed, batch)
            losses.append(ce)
            log_z.append(lz)
            layer_max = maxes if layer_max is None else torch.maximum(layer_max, maxes)
        skeleton.capture(False)
        n = len(windows)
        values = torch.stack([sum(losses) / n, sum(log_z) / n], dim=1).cpu().tolist()
        per_layer = layer_max.cpu().tolist()
        return [{"loss": v[0], "log_z": v[1], "attn_logit_max_per_layer": pl, "attn_logit_max": max(pl)}
                for v, pl in zip(values, per_layer)]

    resumed_from = members[0].state["step"] if members[0].state else None
    if resumed_from is None:
        step, tokens = 0, 0
        loss_sum = torch.zeros(K, 2, device=device)
        loss_count = 0
        for m, init in zip(members, evaluate(list(range(K)))):
            m.init_loss = init["loss"]
            m.history = [{"step": 0, "tokens": 0, "val_loss": init["loss"], "attn_logit_max": init["attn_logit_max"]}]
    else:
        step, tokens = resumed_from, members[0].state["tokens"]
        loss_sum = torch.stack([m.state["loss_sum"] for m in members]).to(device)
        loss_count = members[0].state["loss_count"]
        for m in members:
            m.init_loss, m.history = m.state["init_loss"], m.state["history"]
            m.elapsed, m.train_seconds = m.state["elapsed"], m.state["train_seconds"]
    for m in members:
        m.start_tokens, m.start_seconds = tokens, m.train_seconds
        m.state = None  # loaded; free it

    # The LR of every member at every step (the schedule needs no host value during training).
    lr_host = [[0.0] * K] + [[_learning_rate(s, (s - 1) * batch_size * seq_len, m) for m in members]
                             for s in range(1, total_steps + 1)]
    lr_table = torch.tensor(lr_host, dtype=torch.float32, device=device)  # (steps + 1, pack rows)
    lr_columns = list(range(K))  # pack row -> column of lr_host (member index)
    seeds = [m.config["seed"] for m in members]

    def checkpoint(row: int, finished: bool, metrics: dict | None = None) -> None:
        m = pack.members[row]
        pack.attach(row, step, [lr_host[step][c] for c in lr_columns], with_grads=False)
        save_checkpoint(m.out_dir, {
            "config_hash": m.fingerprint, "finished": finished, "metrics": metrics or {},
            "model": _clone_cpu(m.model.state_dict()), "optimizer": _clone_cpu(m.optimizer.state_dict()),
            "step": step, "tokens": tokens, "history": m.history, "init_loss": m.init_loss,
            "loss_sum": loss_sum[row].detach().cpu().clone(), "loss_count": loss_count,
            "elapsed": m.elapsed + time.perf_counter() - start_time, "train_seconds": m.train_seconds})
        pack.detach_member(row)

    def finish(rows: list[int], finals: list[dict]) -> None:
        for row, final in zip(rows, finals):
            m = pack.members[row]
            m.metrics = _metrics(m, final, step, tokens, start_time, resumed_from, device_kind, precision, K)
            checkpoint(row, finished=True, metrics=m.metrics)
            write_csv(m.out_dir / HISTORY_NAME, m.history)
            write_json(m.out_dir / METRICS_NAME, m.metrics)

    finished: list[_Member] = []
    names = "+".join(f"{m.config['lr']:g}/s{m.config['seed']}" for m in members)
    bar = tqdm(total=total_steps, initial=step, disable=not progress, mininterval=2.0, file=sys.stderr,
               desc=f"{config0['method']} {config0['size']} pack of {K} (lr/seed {names})", unit="step")
    loop_start = time.perf_counter()
    while step < total_steps and pack.members:
        step += 1
        probing = is_probe_step(step, train)
        rows_seeds = [seeds[c] for c in lr_columns]
        unique = sorted(set(rows_seeds))
        host = {s: train_batch(data.train, step, batch_size, seq_len, s) for s in unique}
        if len(unique) == 1:
            batch, batch_dim = torch.from_numpy(host[unique[0]]), None
        else:
            batch, batch_dim = torch.from_numpy(np.stack([host[s] for s in rows_seeds])), 0
        batch = batch.to(device, non_blocking=True)
        lr = lr_table[step]

        pack.flat.grad = None  # here, so probes still see this step's gradients
        params = pack.views(pack.flat)
        vmapped = _vmap(lambda p, f, b: member_loss(p, f, b, probing), (0, 0, batch_dim))
        loss, lm_loss, logits, maxes = vmapped(params, pack.fixed, batch)
        skeleton.capture(False)
        loss.sum().backward()  # members are independent: each row of flat.grad is its own gradient
        with torch.no_grad():
            grad_norm = torch.linalg.vector_norm(pack.flat.grad, dim=1)
            pack.flat.grad.mul_((max_norm / (grad_norm + 1e-6)).clamp(max=1.0)[:, None])
        pack.adamw_(lr, step, betas)
        tokens += batch_size * seq_len
        loss_sum += torch.stack([lm_loss.detach(), loss.detach().float()], dim=1)
        loss_count += 1
        bar.update(1)
        if not probing:
            continue

        mean_loss = loss_sum / loss_count
        lrs = [lr_host[step][c] for c in lr_columns]
        diverged, rows = [], []
        for row, m in enumerate(pack.members):
            pack.attach(row, step, lrs)
            m.model.capture(True)
            layers = m.model.blocks
            for i, layer_max in zip(captured_layers, maxes[row]):
                layers[i].attn.max_logit = layer_max
            member_batch = batch if batch_dim is None else batch[row]
            probe_row = run_probes(ProbeContext(step, tokens, lrs[row], mean_loss[row, 0], grad_norm[row], m.model,
                                                m.optimizer, logits[row].detach(), m.config, batch=member_batch,
                                                autocast=autocast), m.extra_probes)
            if loss_hooks:
                probe_row["loss_total"] = mean_loss[row, 1].item()
            probe_row["time"] = m.train_seconds + time.perf_counter() - loop_start  # probes synced: true time
            m.model.capture(False)
            pack.detach_member(row)
            if not math.isfinite(probe_row["loss"]) or probe_row["loss"] > train["diverge_factor"] * m.init_loss:
                m.diverged_at = step
                diverged.append(row)
            rows.append(probe_row)
        del logits, maxes
        loss_sum.zero_()
        loss_count = 0
        alive = [r for r in range(len(pack.members)) if r not in diverged]
        if alive and (step % train["eval_every"] == 0 or step == total_steps):
            for r, result in zip(alive, evaluate(alive)):
                rows[r]["val_loss"] = result["loss"]
                if step == total_steps:
                    pack.members[r].final = result  # train_run evaluates again: the same numbers
        for m, probe_row in zip(pack.members, rows):
            m.history.append(probe_row)
        bar.set_postfix(loss="/".join(f"{r['loss']:.3f}" for r in rows), refresh=False)
        now = time.perf_counter()
        for m in pack.members:
            m.train_seconds += now - loop_start
        if diverged:
            finish(diverged, evaluate(diverged))
            finished += [pack.members[r] for r in diverged]
            if alive:
                pack.keep(alive)
                alive_index = torch.tensor(alive, device=device)
                loss_sum = loss_sum.index_select(0, alive_index)
                lr_table = lr_table.index_select(1, alive_index)
            else:
                pack.members = []
            lr_columns = [lr_columns[r] for r in alive]
        if step % train["checkpoint_every"] == 0 and step < total_steps:
            for row in range(len(pack.members)):
                checkpoint(row, finished=False)
        loop_start = time.perf_counter()
    now = time.perf_counter()
    for m in pack.members:
        m.train_seconds += now - loop_start
    bar.close()
    if pack.members:
        rows = list(range(len(pack.members)))
        finals = [m.final for m in pack.members]
        if any(f is None for f in finals):
            finals = evaluate(rows)
        finish(rows, finals)
        finished += pack.members
    return finished


def _learning_rate(step: int, tokens: int, member: _Member) -> float:
    return learning_rate(step, tokens, member.config, member.stack)


def _metrics(m: _Member, final: dict, step: int, tokens: int, start_time: float, resumed_from: int | None,
             device: str, precision: str, packed_with: int) -> dict:
    """The metrics dict of ``train_run`` for one member, plus ``packed_with``."""
    metrics = run_metrics(
        m.config, m.stack, m.model, m.history, final, init_loss=m.init_loss, diverged_at=m.diverged_at,
        step=step, tokens=tokens, wall_seconds=m.elapsed + time.perf_counter() - start_time,
        train_seconds=m.train_seconds,
        tokens_per_second=(tokens - m.start_tokens) / max(m.train_seconds - m.start_seconds, 1e-9),
        resumed_from=resumed_from, device=device, precision=precision)
    return {**metrics, "packed_with": packed_with}
