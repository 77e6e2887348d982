"""Build members and stack them into one ensemble whose parameters live in (K, N) tensors.

``build_member(config)`` is the one place a run's model is made: seed, GPT, then the methods'
``transform_model`` hooks (on a K = 1 model). The trainer, a pack, evaluation and the tests
all call it. ``Ensemble(members)`` stacks K such models: member 0's modules become the
ensemble's, and every parameter becomes a (K, ...) view of one row-per-member tensor
``flat`` (K, N), with its gradient a view of ``grad`` (K, N). So the optimizer updates all
members with a handful of element-wise operations on one tensor, clipping is a norm per row,
and a diverged member leaves by dropping its row.

Members must be built alike: the same parameters (names, shapes, trainable flags), buffers
and module settings (attention scale, active blocks, ...); only the values of tensors may
differ. A method whose transforms depend on the LR or seed breaks that, and the error says
which setting differs.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .methods import MethodError, MethodStack, stack_of
from .model import GPT

_SIMPLE = (int, float, bool, str, type(None), tuple)


def build_member(config: dict, stack: MethodStack | None = None) -> GPT:
    """The run's untrained model (K = 1): seeded init, then the methods' model transforms."""
    stack = stack or stack_of(config)
    torch.manual_seed(config["seed"])
    model = GPT(**config["model"])
    for method in stack.owners("transform_model"):
        method.hook("transform_model")(model, config, method.args)
        bad = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.dim() == 0 or t.shape[0] != 1]
        if bad:
            raise MethodError(f"method {method.name!r}: transform_model left {bad[0]} without a leading member "
                              "dimension of size 1 (every parameter and buffer is (members, ...))")
    return model


def _settings(model: nn.Module) -> list[tuple[str, str, dict]]:
    """Every module's type and plain settings (what must agree across members)."""
    out = []
    for name, module in model.named_modules():
        plain = {k: v for k, v in vars(module).items()
                 if not k.startswith("_") and k != "training" and isinstance(v, _SIMPLE)}
        out.append((name, type(module).__name__, plain))
    return out


def _signature(model: nn.Module) -> tuple:
    params = [(n, tuple(p.shape[1:]), p.requires_grad, p.dtype) for n, p in model.named_parameters()]
    buffers = [(n, tuple(b.shape[1:]), b.dtype) for n, b in model.named_buffers()]
    return params, buffers


def check_alike(members: list[GPT], label: str) -> None:
    """Raise MethodError naming the first setting in which the members' models differ."""
    first_sig, first_set = _signature(members[0]), _settings(members[0])
    for m in members[1:]:
        if _signature(m) != first_sig:
            raise MethodError(f"method {label!r}: the members' models have different parameters or buffers; "
                              "a transform depends on the LR or seed (declare PACKABLE = False and say why)")
        for (name, kind, plain), (_, kind2, plain2) in zip(first_set, _settings(m)):
            diff = sorted(k for k in plain.keys() | plain2.keys() if plain.get(k) != plain2.get(k))
            if kind != kind2 or diff:
                what = f"{name or 'model'}.{diff[0]}" if diff else f"{name} ({kind} vs {kind2})"
                raise MethodError(f"method {label!r}: members differ in {what}; a transform depends on the LR "
                                  "or seed (declare PACKABLE = False and say why)")


def _set_buffer(model: nn.Module, name: str, value: torch.Tensor) -> None:
    *path, leaf = name.split(".")
    owner = model.get_submodule(".".join(path)) if path else model
    owner._buffers[leaf] = value


class Ensemble:
    """K members as one GPT; ``flat``/``grad`` hold every parameter of member k in row k."""

    def __init__(self, members: list[GPT], device: torch.device | str = "cpu", label: str = "run"):
        if not members:
            raise ValueError("an ensemble needs at least one member")
        check_alike(members, label)
        self.model = members[0]
        named = list(self.model.named_parameters())
        self.names = [n for n, _ in named]
        self.shapes = [tuple(p.shape[1:]) for _, p in named]
        self.sizes = [math.prod(s) for s in self.shapes]
        self.offsets = [sum(self.sizes[:i]) for i in range(len(self.sizes))]
        self.params: dict[str, nn.Parameter] = dict(named)
        with torch.no_grad():
            rows = [torch.cat([p.detach().reshape(-1).float() for p in m.parameters()]) for m in members]
            self.flat = torch.stack(rows).to(device)
            buffers = {n: torch.cat([dict(m.named_buffers())[n] for m in members]).to(device)
                       for n, _ in self.model.named_buffers()}
        self.grad = torch.zeros_like(self.flat)
        self.buffer_names = list(buffers)
        for name, value in buffers.items():
            _set_buffer(self.model, name, value)
        self._bind()

    @property
    def members(self) -> int:
        return self.flat.shape[0]

    @property
    def device(self) -> torch.device:
        return self.flat.device

    def columns(self, name: str) -> slice:
        i = self.names.index(name)
        return slice(self.offsets[i], self.offsets[i] + self.sizes[i])

    def view(self, flat: torch.Tensor, name: str) -> torch.Tensor:
        """(K, *shape) view of parameter ``name`` inside a (K, N) tensor laid out like ``flat``."""
        i = self.names.index(name)
        return flat[:, self.offsets[i]:self.offsets[i] + self.sizes[i]].view(flat.shape[0], *self.shapes[i])

    def _bind(self) -> None:
        """Make every parameter (and its .grad) a view of its columns of ``flat`` (and ``grad``).

        New Parameter objects each time: autograd remembers a leaf's shape, so a leaf must not
        change its member count in place (tags such as the role attribute are carried over)."""
        for name, old in list(self.params.items()):
            new = nn.Parameter(self.view(self.flat, name), requires_grad=old.requires_grad)
            new.__dict__.update(old.__dict__)
            *path, leaf = name.split(".")
            self.model.get_submodule(".".join(path))._parameters[leaf] = new
            new.grad = self.view(self.grad, name)
            self.params[name] = new

    def zero_grad(self) -> None:
        self.grad.zero_()

    def keep(self, rows: list[int]) -> None:
        """Keep only the members ``rows`` (in that order): the others leave the ensemble."""
        index = torch.tensor(rows, device=self.device)
        self.flat = self.flat.index_select(0, index)
        self.grad = self.grad.index_select(0, index)
        for name in self.buffer_names:
            _set_buffer(self.model, name, self.model.get_buffer(name).index_select(0, index))
        self._bind()

    def member_state(self, k: int) -> dict[str, torch.Tensor]:
        """Member k's model state_dict (K = 1 tensors on the CPU), as its separate run saves it."""
        return {name: t[k:k + 1].detach().to("cpu", copy=True) for name, t in self.model.state_dict().items()}
