"""The optimizer step, written once: an update rule applied to an ensemble's (K, N) tensors.

``AdamW`` is the engine's rule; a method brings another through its ``update_rule`` hook
(``stabench.contract.UpdateRule``). ``Optimizer`` owns what every rule needs around it and
applies the rule to slices of the ensemble's flat tensors:

- per-element options, from the methods' ``param_options`` hooks on each member: ``lr_mult``,
  the weight-decay coefficient, ``eps`` (each a float when uniform, else a (1, N) or (K, N)
  tensor); ``trainable: False`` keeps a parameter out of the update;
- weight decay, following Wortsman et al. (2023): ``coupled`` is AdamW's own form,
  p -= lr_t * wd * p; ``independent`` is p -= (lr_t / peak_lr) * wd * p, which is AdamW's form
  with the coefficient wd / (peak_lr * lr_mult) (computed once; a member's own peak). Matrices
  (embedding, hidden, readout) decay by default; norm gains and other vectors do not;
- the rule's state (``exp_avg``, ``exp_avg_sq``, ... as (K, N) tensors) and a step count per
  parameter. A parameter takes part in a step when it requires grad (a depth schedule locks
  blocks by switching that off; their elements are then neither moved nor decayed, and their
  count stands still, as in torch's AdamW, where they have no gradient). Parameters in
  consecutive columns with equal counts form one slice, so a whole model is usually one call.

The per-member learning rate is a (K,) tensor of the current step, so nothing here reads a
device value on the host.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .contract import StepHyper, UpdateRule
from .ensemble import Ensemble
from .model import parameter_roles

DECAYED_ROLES = ("embedding", "hidden", "readout")


class AdamW:
    """AdamW (Loshchilov and Hutter) on stacked tensors, the formula of torch.optim.AdamW:

        p <- p * (1 - lr * wd);  m <- lerp(m, g, 1 - beta1);  v <- beta2 v + (1 - beta2) g^2
        p <- p - (lr / (1 - beta1^t)) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
    """

    state_names = ("exp_avg", "exp_avg_sq")

    def update(self, param, grad, state, h: StepHyper) -> None:
        beta1, beta2 = h.betas
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        if not (isinstance(h.weight_decay, float) and h.weight_decay == 0.0):
            param.mul_(1 - h.lr * h.weight_decay)
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        denom = (exp_avg_sq.sqrt() / math.sqrt(1 - beta2 ** h.step)).add_(h.eps)
        param.sub_(exp_avg / denom * (h.lr / (1 - beta1 ** h.step)))

    def direction(self, state, h: StepHyper) -> torch.Tensor:
        beta1, beta2 = h.betas
        m_hat = state["exp_avg"] / (1 - beta1 ** h.step)
        v_hat = state["exp_avg_sq"] / (1 - beta2 ** h.step)
        return m_hat / (v_hat.sqrt() + h.eps)

    def preconditioner(self, state, h: StepHyper) -> torch.Tensor:
        return (state["exp_avg_sq"] / (1 - h.betas[1] ** h.step)).sqrt() + h.eps


def _compact(rows: list[torch.Tensor]) -> torch.Tensor | float:
    """Per-member per-element option rows -> a float if uniform, else (1, N) or (K, N)."""
    stacked = torch.stack(rows)
    if bool((stacked == stacked.flatten()[0]).all()):
        return float(stacked.flatten()[0])
    if bool((stacked == stacked[:1]).all()):
        return stacked[:1]
    return stacked


def _slice(option, cols: slice):
    return option if isinstance(option, float) else option[:, cols]


@dataclass
class ParamView:
    """One parameter's optimizer state, for probes: (K, *shape) views and the rule's hyper."""

    name: str
    state: dict[str, torch.Tensor]
    hyper: StepHyper
    lr_mult: torch.Tensor | float


class Optimizer:
    """An update rule applied to an ensemble, with per-element options and step counts."""

    def __init__(self, ensemble: Ensemble, rule: UpdateRule, configs: list[dict], options: list[dict[str, dict]]):
        self.ensemble, self.rule = ensemble, rule
        self.betas = tuple(float(b) for b in configs[0]["optimizer"]["betas"])
        roles = parameter_roles(ensemble.model)
        lr_mult, decay, eps = [], [], []
        trainable = {name: True for name in ensemble.names}
        for config, opts in zip(configs, options):
            opt_cfg, peak = config["optimizer"], config["lr"]
            rows = ([], [], [])
            for name, size in zip(ensemble.names, ensemble.sizes):
                o = opts.get(name, {})
                mult = float(o.get("lr_mult", 1.0))
                wd = float(o.get("weight_decay", opt_cfg["weight_decay"] if roles[name] in DECAYED_ROLES else 0.0))
                if opt_cfg["decay_mode"] == "independent":
                    wd = wd / (peak * mult) if mult else 0.0
                for row, value in zip(rows, (mult, wd, float(o.get("eps", opt_cfg["eps"])))):
                    row.append(torch.full((size,), value, dtype=torch.float32))
                if o.get("trainable", True) is False:
                    trainable[name] = False
            lr_mult.append(torch.cat(rows[0]))
            decay.append(torch.cat(rows[1]))
            eps.append(torch.cat(rows[2]))
        device = ensemble.device
        self.lr_mult, self.weight_decay, self.eps = (
            o if isinstance(o, float) else o.to(device) for o in (_compact(lr_mult), _compact(decay), _compact(eps)))
        for name, flag in trainable.items():
            if not flag:
                ensemble.params[name].requires_grad_(False)
        self.frozen = {name for name, flag in trainable.items() if not flag}
        self.state = {s: torch.zeros_like(ensemble.flat) for s in rule.state_names}
        self.counts = {name: 0 for name in ensemble.names}
        self.apply = self._apply

    def _hyper(self, lr: torch.Tensor, cols: slice, count: int) -> StepHyper:
        mult = _slice(self.lr_mult, cols)
        return StepHyper(lr=lr[:, None] * mult, weight_decay=_slice(self.weight_decay, cols),
                         eps=_slice(self.eps, cols), betas=self.betas, step=count)

    def slices(self) -> list[tuple[slice, list[str], int]]:
        """(columns, parameter names, step count) of the parameters that take part in a step."""
        out: list[tuple[slice, list[str], int]] = []
        e = self.ensemble
        for name, offset, size in zip(e.names, e.offsets, e.sizes):
            if not e.params[name].requires_grad or name in self.frozen:
                continue
            count = self.counts[name]
            if out and out[-1][0].stop == offset and out[-1][2] == count:
                out[-1] = (slice(out[-1][0].start, offset + size), out[-1][1] + [name], count)
            else:
                out.append((slice(offset, offset + size), [name], count))
        return out

    @torch.no_grad()
    def step(self, lr: torch.Tensor, clip: float = 0.0) -> torch.Tensor:
        """Clip each member's gradient to global norm ``clip`` (0: no clipping), then update every
        member with its own learning rate ``lr`` (K,). Returns the norms before clipping (K,)."""
        plan = self.slices()
        spans = tuple((cols.start, cols.stop) for cols, _, _ in plan)
        counts = tuple(count + 1 for _, _, count in plan)
        grad_norm = self.apply(lr, clip, spans, counts)
        for _, names, _ in plan:
            for name in names:
                self.counts[name] += 1
        return grad_norm

    def _apply(self, lr: torch.Tensor, clip: float, spans: tuple, counts: tuple) -> torch.Tensor:
        """The device work of a step: what ``compile`` compiles (the step counts arrive as
        arguments, so they become symbolic after one recompile instead of one graph per step)."""
        e = self.ensemble
        grad_norm = torch.linalg.vector_norm(e.grad, dim=1)
        if clip > 0:
            e.grad.mul_((clip / (grad_norm + 1e-6)).clamp(max=1.0)[:, None])
        for (start, stop), count in zip(spans, counts):
            cols = slice(start, stop)
            state = {s: t[:, cols] for s, t in self.state.items()}
            self.rule.update(e.flat[:, cols], e.grad[:, cols], state, self._hyper(lr, cols, count))
        return grad_norm

    def compile(self) -> None:
        """Compile the clipping and the update into one graph (train.compile)."""
        self.apply = torch.compile(self._apply)

    def param(self, name: str, lr: torch.Tensor) -> ParamView:
        """The state of parameter ``name`` after the last step, for probes: every tensor shaped
        like the parameter (K, ...) or broadcastable to it."""
        e = self.ensemble
        cols, shape = e.columns(name), tuple(e.params[name].shape[1:])

        def shaped(x):
            if isinstance(x, float):
                return x
            return x.reshape(x.shape[0], *shape) if x.shape[1] > 1 else x.reshape(x.shape[0], *[1] * len(shape))

        h = self._hyper(lr, cols, max(self.counts[name], 1))
        hyper = StepHyper(lr=shaped(h.lr), weight_decay=shaped(h.weight_decay), eps=shaped(h.eps), betas=h.betas,
                          step=h.step)
        state = {s: shaped(t[:, cols]) for s, t in self.state.items()}
        return ParamView(name, state, hyper, shaped(_slice(self.lr_mult, cols)))

    def keep(self, rows: list[int]) -> None:
        """Follow ``Ensemble.keep``: drop the state and options of the members that left."""
        index = torch.tensor(rows, device=self.ensemble.device)
        self.state = {s: t.index_select(0, index) for s, t in self.state.items()}
        for attr in ("lr_mult", "weight_decay", "eps"):
            value = getattr(self, attr)
            if not isinstance(value, float) and value.shape[0] > 1:
                setattr(self, attr, value.index_select(0, index))

    def member_state(self, k: int) -> dict:
        """Member k's optimizer state as its separate run checkpoints it (K = 1 tensors, CPU)."""
        e = self.ensemble
        return {"counts": dict(self.counts),
                "state": {name: {s: e.view(t, name)[k:k + 1].to("cpu", copy=True) for s, t in self.state.items()}
                          for name in e.names}}

    def load_member_states(self, states: list[dict]) -> None:
        """Restore the state of every member from checkpoints (``member_state`` of each)."""
        counts = states[0]["counts"]
        if any(s["counts"] != counts for s in states):
            raise ValueError("members resumed together must have taken the same optimizer steps")
        e = self.ensemble
        with torch.no_grad():
            for k, member in enumerate(states):
                for name in e.names:
                    for s, t in self.state.items():
                        e.view(t, name)[k].copy_(member["state"][name][s][0])
        self.counts = dict(counts)


class OptimizerView:
    """What probes and on_step hooks see of the optimizer: per-parameter state at this step."""

    def __init__(self, optimizer: Optimizer, lr: torch.Tensor):
        self._optimizer, self._lr = optimizer, lr

    @property
    def rule(self) -> UpdateRule:
        return self._optimizer.rule

    @property
    def state_names(self) -> tuple[str, ...]:
        return tuple(self._optimizer.state)

    def param(self, name: str) -> ParamView:
        return self._optimizer.param(name, self._lr)

    def params(self) -> list[str]:
        """Parameters with optimizer state (every trainable one that has been updated)."""
        o = self._optimizer
        return [n for n in o.ensemble.names if o.counts[n] > 0 and n not in o.frozen]
