"""The training step of an ensemble: forward, the loss the run optimizes, backward, update.

``TrainingStep`` is the hot path and nothing else: on the device it is the features of all K
members, their fused readout and cross-entropy (``stabench.readout``), the methods' loss
terms, one backward of the members' summed losses (each member gets its own gradient), an
all-reduce of the flat gradient across processes, and the clipped update of the (K, N)
parameters (``stabench.update``). It reads no value on the host. With ``train.compile`` the
forward is one compiled graph with its backward (probe steps, which capture the largest
attention logits, a second one) and clipping with the update another (``Optimizer.compile``).

The same loss, through the logits and twice differentiable, is ``objective``: what the
curvature probe differentiates (at the current weights, or with float64 copies in their place).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .contract import Context
from .ensemble import Ensemble
from .methods import MethodStack
from .readout import fused_cross_entropy, logits_budget_bytes
from .update import Optimizer


def member_cross_entropy(logits: torch.Tensor | list[torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token loss of each member: logits (K, B, T, V) (or K of (B, T, V)), targets
    (K or 1, B, T) -> (K,), through the logits (twice differentiable), all members at once."""
    logits = torch.stack(logits) if isinstance(logits, (list, tuple)) else logits
    k, vocab = logits.shape[0], logits.shape[-1]
    targets = targets.expand(k, *targets.shape[1:])
    losses = F.cross_entropy(logits.float().reshape(-1, vocab), targets.reshape(-1), reduction="none")
    return losses.view(k, -1).mean(dim=1)


@dataclass
class StepResult:
    lm_loss: torch.Tensor            # (K,) the language-model loss
    total: torch.Tensor              # (K,) the loss the run optimizes (with the methods' terms)
    hidden: torch.Tensor             # (K, B, T, d) the final hidden states (for probes)
    maxima: torch.Tensor | None      # (layers, K) largest attention logits, on probe steps
    grad_norm: torch.Tensor          # (K,) before clipping


class TrainingStep:
    """One optimizer step of an ensemble, and the loss it optimizes."""

    def __init__(self, ensemble: Ensemble, optimizer: Optimizer, stack: MethodStack, config: dict, accelerator,
                 members: tuple[tuple[float, ...], tuple[int, ...]]):
        self.ensemble, self.optimizer, self.stack, self.config = ensemble, optimizer, stack, config
        self.accelerator = accelerator
        self.keep(*members)
        logits_budget_bytes(accelerator.device)  # read once, before compiling
        self.forward_loss = self._forward_loss
        if config["train"]["compile"]:
            torch.compiler.reset()  # graphs of an earlier ensemble in this process guard on its objects
            self.forward_loss = torch.compile(self._forward_loss)
            optimizer.compile()

    def keep(self, peak_lrs: tuple[float, ...], seeds: tuple[int, ...]) -> None:
        """The members now training (after some diverged and left)."""
        self.peak_lrs, self.seeds = tuple(peak_lrs), tuple(seeds)

    def context(self, step: int, tokens: int, **fields) -> Context:
        return Context(step=step, tokens=tokens, config=self.config, model=self.ensemble.model,
                       peak_lrs=self.peak_lrs, seeds=self.seeds, autocast=self.accelerator.autocast, **fields)

    def _forward_loss(self, batch: torch.Tensor, lr: torch.Tensor, step: int, tokens: int, capture: bool):
        """(language-model loss, optimized loss, hidden states, attention maxima or None): the
        part of a step that ``train.compile`` compiles with its backward."""
        hidden, maxima = self.ensemble.model.features(batch[..., :-1], capture)
        ctx = self.context(step, tokens, lr=lr, batch=batch, hidden=hidden, targets=batch[..., 1:],
                           fused_readout=True)
        lm_loss, total = self.losses(ctx)
        return lm_loss, total, hidden, maxima

    def __call__(self, batch: torch.Tensor, lr: torch.Tensor, step: int, tokens: int, probing: bool) -> StepResult:
        """One step on ``batch`` with this step's learning rates ``lr`` (K,)."""
        ensemble = self.ensemble
        ensemble.zero_grad()
        with self.accelerator.autocast():
            lm_loss, total, hidden, maxima = self.forward_loss(batch, lr, step, tokens, probing)
        total.sum().backward()
        world = self.accelerator.num_processes
        if world > 1:
            torch.distributed.all_reduce(ensemble.grad)
            ensemble.grad.div_(world)
        grad_norm = self.optimizer.step(lr, self.config["optimizer"]["grad_clip"])
        return StepResult(lm_loss.detach(), total.detach(), hidden, maxima, grad_norm)

    def losses(self, ctx: Context) -> tuple[torch.Tensor, torch.Tensor]:
        """(language-model loss, the loss the run optimizes: plus the methods' terms), each (K,).

        On a training step (``ctx.fused_readout``) the cross-entropy is stabench.readout's fused
        one, computed together with log Z if a method's term asked for it; otherwise (the
        curvature probe's objective) through the logits, twice differentiable."""
        terms = [method.hook("loss")(ctx, method.args) for method in self.stack.owners("loss")]
        if not ctx.fused_readout:
            lm_loss = member_cross_entropy(ctx.member_logits, ctx.targets)
        elif "lm_loss" in ctx.cache:  # a term asked for log Z: the same fused pass gave the loss
            lm_loss = ctx.cache["lm_loss"]
        else:
            lm_loss = fused_cross_entropy(ctx.hidden, self.ensemble.model.head.weight, ctx.targets)
        total = lm_loss
        for term in terms:
            total = total + term
        return lm_loss, total

    def objective(self, step: int, tokens: int, lr: torch.Tensor, batch: torch.Tensor,
                  params: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """The loss the run optimizes on ``batch``, (K,), with grad: at the current weights
        (under the trainer's autocast), or with ``params`` (name -> tensor) in their place
        (as given: e.g. float64 copies for an exact Hessian; no autocast)."""
        model = self.ensemble.model

        def compute() -> torch.Tensor:
            ctx = self.context(step, tokens, lr=lr, batch=batch, hidden=model.features(batch[..., :-1])[0],
                               targets=batch[..., 1:])
            return self.losses(ctx)[1]

        if params is None:
            with self.accelerator.autocast():
                return compute()
        return torch.func.functional_call(_Call(model, compute), {f"model.{k}": v for k, v in params.items()}, ())


class _Call(torch.nn.Module):
    """Calls ``fn`` with ``model`` as a submodule, so torch.func.functional_call can swap its weights."""

    def __init__(self, model: torch.nn.Module, fn):
        super().__init__()
        self.model, self.fn = model, fn

    def forward(self) -> torch.Tensor:
        return self.fn()
