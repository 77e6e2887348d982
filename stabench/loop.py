"""The one training loop: an ensemble of K >= 1 runs of one (method, size), any LRs and seeds.

``train(runs, out_dirs, data_dir)`` trains (or resumes, or just reports) runs that differ only
in peak LR and seed, as one ensemble (``stabench.ensemble``), and writes each run's folder
(``stabench.recorder``). A separate run is K = 1; every piece is the same for any K:

- building a member: ``build_member`` (seed, GPT, the methods' transforms), then stacking;
- the step (``stabench.step``, the hot path): one forward of all members on their batches
  (``stabench.batches``: members with one seed share it; a ``transform_batch`` hook acts on
  the shared step's batch), one backward of the sum of the members' losses (each member gets
  its own gradient), global-norm clipping per member, the update rule on the (K, N) tensors
  (``stabench.update``); then the methods' ``on_step`` hooks;
- probe steps (every ``probe_every``, and eval steps): the only host syncs. The loss of every
  step accumulates on the device and reaches the recorder here; probes run; a member whose
  mean loss since the last probe is non-finite or above ``diverge_factor`` x the benchmark's
  l0 (``stabench.selection``, the rule the analysis applies too) has diverged: it is finished
  (final validation, ``stabench.validation``; metrics, checkpoint) and leaves the ensemble, so
  it costs nothing afterwards and the others are untouched (rows never mix).

Resume: every ``checkpoint_every`` steps each run saves its own checkpoint. Batches depend
only on (seed, step) and a checkpoint holds model, optimizer, RNG, history and losses, so a
resumed run ends exactly where an uninterrupted one does (on CPU), alone or in its pack; runs
whose checkpoints stopped at different steps resume as separate ensembles. A pack member
resumed alone after its pack-mates finished ends close to, not exactly at, the uninterrupted
pack (4.8e-7 measured: a batch of another shape rounds differently).

A deadline (``train(..., deadline=)``, a ``time.monotonic()`` value; ``stabench train
--stop-after-minutes``, a cluster job's time limit less a margin): once it passes, the
ensemble saves every member's checkpoint at the step it has reached, prints one line and
stops; ``train`` returns None for those runs. The clock is read on the host after each step
(no tensor is touched, so no extra sync on a GPU); with several processes only at probe
steps, and the ranks agree by one all-reduce there. The next job resumes from the checkpoint
exactly as after a kill (bit for bit on CPU, tests/test_job_limit.py).

Several processes (``accelerate launch``): each rank trains its share of the same global
batch of ``train.batch_size`` windows, the flat gradient is averaged across ranks in one
all-reduce, and every rank takes the same divergence decision. Packs are single-process.
"""

from __future__ import annotations

import os
import time
import warnings
from collections import defaultdict
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .batches import Batches
from .checkpoint import set_rng_state
from .config import ConfigError
from .contract import Context
from .data import load_data, val_windows
from .device import device_name, keep_host_memory, make_accelerator, resolve_device
from .ensemble import Ensemble, build_member
from .methods import MethodStack, param_options
from .probes import all_probes, families, run_probes
from .progress import Progress
from .recorder import Member
from .runlock import run_locks
from .runspec import RunSpec
from .schedule import learning_rates, tokens_before
from .step import TrainingStep
from .update import AdamW, Optimizer, OptimizerView
from .validation import validate


# Parameters of a pack are strided views of one (K, N) tensor; their gradients accumulate in
# place into views of another, which torch reports as a possible slowdown (not an error).
warnings.filterwarnings("ignore", message="grad and param do not obey the gradient layout contract")

# The exit status of a train job that stopped at its deadline with its runs saved: the
# workflow's retries resubmit it and the next job continues (BSD's EX_TEMPFAIL, "try again").
CONTINUE_EXIT = 75


class DataMismatchError(ValueError):
    """The prepared data folder was built from different data settings than the run asks for."""


def is_probe_step(step: int, train: dict) -> bool:
    return step % train["probe_every"] == 0 or step % train["eval_every"] == 0 or step == train["steps"]


def check_data(manifest: dict, spec: RunSpec, data_dir: Path) -> None:
    """The data folder was prepared from the run's data settings, and its tokenizer's ids fit
    the model's vocabulary (which may pad it, never cut it)."""
    if manifest.get("data") != spec.data.to_dict():
        raise DataMismatchError(
            f"{data_dir} was prepared from data settings {manifest.get('data')}, but the run asks for "
            f"{spec.data.to_dict()}; prepare it again (stabench prepare) or point --data elsewhere")
    if int(manifest.get("vocab_size", 0)) > spec.model.vocab_size:
        raise DataMismatchError(
            f"{data_dir}: its tokenizer has {manifest['vocab_size']} tokens, more than the model's vocabulary "
            f"(data.vocab_size {spec.model.vocab_size}); valid: data.vocab_size >= {manifest['vocab_size']}")


def check_same_ensemble(runs: list[RunSpec]) -> None:
    """Raise ConfigError unless the runs differ only in peak LR and seed."""
    def rest(spec: RunSpec) -> dict:
        return {k: v for k, v in spec.to_dict().items() if k not in ("lr", "seed")}
    first = rest(runs[0])
    for run in runs[1:]:
        if rest(run) != first:
            keys = sorted(k for k in first if first[k] != rest(run).get(k))
            raise ConfigError(f"runs trained together may differ only in lr and seed; these differ in {', '.join(keys)}")
    pairs = [(r.lr, r.seed) for r in runs]
    if len(set(pairs)) != len(pairs):
        raise ConfigError("the same (lr, seed) appears twice among runs trained together")


def check_own_folders(out_dirs: list[Path]) -> None:
    if len({Path(o).resolve() for o in out_dirs}) != len(out_dirs):
        raise ConfigError("two runs trained together share an output folder")


def train(runs: list[RunSpec], out_dirs: list[Path], data_dir: Path, *, progress: bool = True,
          pack: bool = True, instrument: Callable[[int, bool], AbstractContextManager] | None = None,
          deadline: float | None = None) -> list[dict | None]:
    """Train runs of one (method, size) together; return their metrics in the order given
    (None for a run stopped at ``deadline``, a ``time.monotonic()`` value, with its checkpoint saved).

    ``pack=False`` (or a method that declares itself unpackable, or several processes) trains
    them one at a time through the same loop. ``instrument(step, probing)``, if given, is a
    context manager entered around each training step (``stabench speed`` counts ops with it)."""
    if not runs or len(runs) != len(out_dirs):
        raise ValueError(f"train: {len(runs)} runs for {len(out_dirs)} output folders")
    check_same_ensemble(runs)
    out_dirs = [Path(o) for o in out_dirs]
    check_own_folders(out_dirs)
    data_dir = Path(data_dir)
    data = load_data(data_dir)
    check_data(data.manifest, runs[0], data_dir)
    stack = runs[0].stack
    main_process = int(os.environ.get("RANK", "0")) == 0  # several processes: rank 0 owns the folders
    with run_locks(out_dirs if main_process else []):
        members = [Member.open(run, out, write=main_process) for run, out in zip(runs, out_dirs)]
        waiting = [m for m in members if not m.finished]
        alone = not pack or stack.unpackable_reason() or runs[0].config["train"]["world_size"] > 1
        groups: dict[int, list[Member]] = defaultdict(list)
        for i, m in enumerate(waiting):
            groups[i if alone else m.resume_step].append(m)
        stopped = []
        for group in groups.values():
            if stopped:  # the deadline passed: later groups wait for the next job
                stopped.append(group[0].resume_step)
                continue
            ensemble = EnsembleRun(group, stack, data, progress, instrument, deadline)
            ensemble.run()
            if ensemble.stopped_at is not None:
                stopped.append(ensemble.stopped_at)
        if stopped and main_process:
            left = sum(not m.finished for m in members)
            print(f"stabench: stopped at the job's time limit at step {min(stopped)} of {runs[0].train.steps} "
                  f"({left} of {len(members)} runs unfinished, checkpoints saved); "
                  "the run continues from there in the next job", flush=True)
    return [m.metrics for m in members]


class EnsembleRun:
    """Training state of one ensemble: members, model, optimizer, schedule, loss buffer."""

    def __init__(self, members: list[Member], stack: MethodStack, data, progress: bool,
                 instrument: Callable[[int, bool], AbstractContextManager] | None = None,
                 deadline: float | None = None):
        self.members, self.stack, self.data = members, stack, data
        self.deadline, self.stopped_at = deadline, None
        self.instrument = instrument or (lambda step, probing: nullcontext())
        self.config = members[0].config
        self.train_cfg = self.config["train"]
        self.device_kind, self.precision = resolve_device(self.config)
        if self.device_kind == "cpu":
            keep_host_memory()
        trackers = self.train_cfg["trackers"]
        self.accelerator = make_accelerator(self.device_kind, self.precision, trackers, members[0].out_dir.parent)
        if trackers:  # one tracker run per ensemble; each run's values under its own label
            self.accelerator.init_trackers("tracking", config={
                "method": self.config["method"], "size": self.config["size"],
                "lrs": " ".join(f"{m.config['lr']:g}" for m in members),
                "seeds": " ".join(str(m.config["seed"]) for m in members)})
        self.world, self.rank = self.accelerator.num_processes, self.accelerator.process_index
        if self.world != self.train_cfg["world_size"]:
            raise ConfigError(f"the run was resolved for {self.train_cfg['world_size']} processes but "
                              f"{self.world} are running")
        models = []
        options = []
        for m in members:
            model = build_member(m.config, stack)
            if m.state is not None:
                model.load_state_dict(m.state["model"])
            options.append(param_options(model, m.config, stack))
            models.append(model)
        label = f"{self.config['method']}"
        self.ensemble = Ensemble(models, self.accelerator.device, label)
        rule = stack.exclusive("update_rule")
        self.optimizer = Optimizer(self.ensemble, rule[0](self.config, rule[1]) if rule else AdamW(),
                                   [m.config for m in members], options)
        self.step = members[0].resume_step
        if members[0].state is not None:
            self.optimizer.load_member_states([m.state["optimizer"] for m in members])
            set_rng_state(members[0].state["rng"])
        self.tokens_at = tokens_before(self.config, stack)
        columns = [learning_rates(m.config, stack, self.tokens_at) for m in members]
        self.lr_table = torch.tensor(columns, dtype=torch.float32).T.contiguous().to(self.device)  # (steps + 1, K)
        self.probes = all_probes(stack.probes())
        self.owner: dict[str, str] = {}
        self.windows = torch.from_numpy(val_windows(data.val, self.train_cfg["eval_windows"],
                                                    self.train_cfg["seq_len"]).astype(np.int64))
        self.loss_buffer = torch.zeros(self.train_cfg["probe_every"], len(members), 2, device=self.device)
        self.buffered: list[int] = []  # steps whose losses are in the buffer
        self.last_probe = members[0].history[-1]["step"] if members[0].history else 0
        self.batches = Batches(data.train, self.train_cfg, [m.config["seed"] for m in members], self.rank,
                               self.world, self.device)
        self.train_step = TrainingStep(self.ensemble, self.optimizer, stack, self.config, self.accelerator,
                                       (self.peak_lrs, self.seeds))
        self.progress = Progress(self.train_cfg["steps"], self.step, self._title(), enabled=progress)

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    def _title(self) -> str:
        runs = ", ".join(f"lr={m.config['lr']:g} s{m.config['seed']}" for m in self.members)
        return f"{self.config['method']} {self.config['size']} ({runs})"

    # ---- pieces of a step -------------------------------------------------------------------

    def batch(self, step: int) -> torch.Tensor:
        """(S, B / world, T + 1) token windows of this rank, after the methods' transform_batch."""
        batch = self.batches(step)
        hook = self.stack.exclusive("transform_batch")
        return hook[0](batch, step, self.config, hook[1]) if hook else batch

    def context(self, step: int, **fields) -> Context:
        return self.train_step.context(step, self.tokens_at[step], **fields)

    @property
    def peak_lrs(self) -> tuple[float, ...]:
        return tuple(m.config["lr"] for m in self.members)

    @property
    def seeds(self) -> tuple[int, ...]:
        return tuple(m.config["seed"] for m in self.members)

    def step_once(self, step: int, probing: bool) -> Context:
        """One training step; returns the context its probes and on_step hooks see."""
        batch = self.batch(step)
        lr = self.lr_table[step]
        result = self.train_step(batch, lr, step, self.tokens_at[step], probing)
        self.loss_buffer[len(self.buffered)] = torch.stack([result.lm_loss, result.total.float()], dim=1)
        self.buffered.append(step)
        ctx = self.context(step, lr=lr, batch=batch, hidden=result.hidden, targets=batch[..., 1:], fused_readout=True)
        ctx.optimizer, ctx.grad_norm = OptimizerView(self.optimizer, lr), result.grad_norm
        ctx.objective = lambda params=None: self.train_step.objective(step, self.tokens_at[step], lr, batch, params)
        if result.maxima is not None:
            ctx.cache["attn_logit_max"] = result.maxima
        return ctx

    def context_of_alive(self, ctx: Context) -> Context:
        """``ctx``, or a fresh one for the members left after some diverged at this probe step."""
        if ctx.members == len(self.members):
            return ctx
        lr = self.lr_table[ctx.step]
        return self.context(ctx.step, lr=lr, optimizer=OptimizerView(self.optimizer, lr))

    def after_step(self, ctx: Context) -> None:
        """The methods' on_step hooks, after the step's probes (which see the step as it ran)."""
        for method in self.stack.owners("on_step"):
            method.hook("on_step")(ctx, method.args)

    def flush_losses(self) -> None:
        """Per-step losses of the buffer -> each member's record (one host copy)."""
        if not self.buffered:
            return
        values = self.loss_buffer[: len(self.buffered)].cpu()
        if self.world > 1:  # every rank must agree on divergence
            values = self.accelerator.reduce(values.to(self.device), reduction="mean").cpu()
        for k, m in enumerate(self.members):
            m.add_losses(self.buffered, values[:, k].tolist())
        self.buffered = []

    def evaluate(self) -> list[dict]:
        """Each member's validation loss, log Z and attention maxima (stabench.validation)."""
        return validate(self.ensemble.model, self.windows, self.train_cfg["eval_batch_size"], self.device,
                        self.accelerator.autocast)

    # ---- the loop ---------------------------------------------------------------------------

    def run(self) -> None:
        if self.members[0].state is None:
            for m, init in zip(self.members, self.evaluate()):
                m.init_loss = init["loss"]
                m.history = [{"step": 0, "tokens": 0, "val_loss": init["loss"], "attn_logit_max": init["attn_logit_max"]}]
        for m in self.members:
            m.state = None  # loaded; free it
            m.session_seconds = m.train_seconds
        self.packed_with = len(self.members)
        self.start_tokens = self.tokens_at[self.step + 1]
        self.session_start = time.perf_counter()
        tr = self.train_cfg
        self.ensemble.model.train()
        loop_start = time.perf_counter()
        while self.step < tr["steps"] and self.members:
            self.step += 1
            step = self.step
            probing = is_probe_step(step, tr)
            with self.instrument(step, probing):
                ctx = self.step_once(step, probing)
            self.progress.update()
            checkpointing = step % tr["checkpoint_every"] == 0 and step < tr["steps"]
            if not (probing or checkpointing):
                self.after_step(ctx)
                if not self.out_of_time(step, probing):
                    continue
            else:
                now = time.perf_counter()
                for m in self.members:
                    m.train_seconds += now - loop_start
                if probing:
                    self.probe(ctx)
                if self.members:
                    self.after_step(self.context_of_alive(ctx))
                if checkpointing:
                    self.flush_losses()
                    for k, m in enumerate(self.members):
                        self.save(k, m)
                loop_start = time.perf_counter()
                if not self.out_of_time(step, probing):
                    continue
            # the deadline passed: this step's state is every member's checkpoint; stop here
            now = time.perf_counter()
            for m in self.members:
                m.train_seconds += now - loop_start
            loop_start = now
            if not checkpointing:
                self.flush_losses()
                for k, m in enumerate(self.members):
                    self.save(k, m)
            self.stopped_at = step
            break
        now = time.perf_counter()
        for m in self.members:
            m.train_seconds += now - loop_start
        self.progress.close()
        if self.members and self.stopped_at is None:
            finals = [m.final for m in self.members]
            self.finish(list(range(len(self.members))), finals if None not in finals else self.evaluate())
        if self.train_cfg["trackers"]:
            self.accelerator.end_training()

    def out_of_time(self, step: int, probing: bool) -> bool:
        """Whether to stop after ``step`` for the deadline: never at the last step (it finishes),
        on the host clock alone; with several processes only at probe steps, where the ranks
        have synced anyway and agree (any rank past its deadline stops them all)."""
        if self.deadline is None or step >= self.train_cfg["steps"] or not self.members:
            return False
        late = time.monotonic() >= self.deadline
        if self.world == 1:
            return late
        if not probing:
            return False
        flag = torch.tensor([float(late)], device=self.device)
        return bool(self.accelerator.reduce(flag, reduction="sum").item() > 0)

    def probe(self, ctx: Context) -> None:
        tr = self.train_cfg
        self.flush_losses()
        means = [m.mean_loss_since(self.last_probe) for m in self.members]
        self.last_probe = ctx.step
        ctx.loss = torch.tensor(means)
        with torch.no_grad():
            rows, owner = run_probes(ctx, self.probes)
        self.owner.update(owner)
        diverged = [k for k, m in enumerate(self.members) if m.is_diverged(means[k], tr["diverge_factor"])]
        if len(diverged) < len(self.members) and (ctx.step % tr["eval_every"] == 0 or ctx.step == tr["steps"]):
            for k, result in enumerate(self.evaluate()):
                if k not in diverged:
                    rows[k]["val_loss"] = result["loss"]
                    if ctx.step == tr["steps"]:
                        self.members[k].final = result  # the final evaluation: the same numbers
        for k, (m, row) in enumerate(zip(self.members, rows)):
            row["tokens"] = self.tokens_at[ctx.step + 1]
            row["time"] = m.train_seconds  # probes synced: true time
            m.history.append(row)
            if k in diverged:
                m.diverged_at = ctx.step
        self.progress.probe(ctx.step, [r["loss"] for r in rows])
        if self.train_cfg["trackers"]:
            self.accelerator.log({f"{m.out_dir.name}/{k}": v for m, row in zip(self.members, rows)
                                  for k, v in row.items() if k != "step"}, step=ctx.step)
        if diverged:
            results = self.evaluate()
            self.finish(diverged, [results[k] for k in diverged])
            alive = [k for k in range(len(self.members)) if k not in diverged]
            self.members = [self.members[k] for k in alive]
            if alive:
                self.ensemble.keep(alive)
                self.optimizer.keep(alive)
                self.batches.keep(list(self.seeds))
                self.train_step.keep(self.peak_lrs, self.seeds)
                self.lr_table = self.lr_table[:, alive].contiguous()
                self.loss_buffer = self.loss_buffer[:, alive].contiguous()

    def save(self, k: int, m: Member, finished: bool = False) -> None:
        if not self.accelerator.is_main_process:  # one writer per run (DDP launches several processes)
            return
        payload = {"model": self.ensemble.member_state(k), "optimizer": self.optimizer.member_state(k),
                   "step": self.step, "tokens": self.tokens_at[self.step + 1]}
        m.checkpoint(payload, elapsed=m.elapsed + time.perf_counter() - self.session_start, finished=finished)

    def finish(self, rows: list[int], finals: list[dict]) -> None:
        """Metrics, final checkpoint and files of the members ``rows`` (finished or diverged)."""
        self.flush_losses()
        model = self.ensemble.model
        model_info = {"n_params": model.num_parameters(non_embedding=False),
                      "n_params_non_embedding": model.num_parameters(non_embedding=True)}
        tokens = self.tokens_at[self.step + 1]
        for k, final in zip(rows, finals):
            m = self.members[k]
            m.finish(final, step=self.step, tokens=tokens,
                     wall_seconds=m.elapsed + time.perf_counter() - self.session_start,
                     tokens_per_second=(tokens - self.start_tokens) / max(m.train_seconds - m.session_seconds, 1e-9),
                     families=families(self.probes, self.owner), packed_with=self.packed_with,
                     device=device_name(self.device_kind), precision=self.precision, model_info=model_info)
            if self.accelerator.is_main_process:
                self.save(k, m, finished=True)
                m.write_files()
