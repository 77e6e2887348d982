"""Train one run of a benchmark grid with Accelerate and write its result folder.

The hot path does no host synchronisation: the train loss accumulates on the device and is
read, with every probe, only on probe steps (every ``probe_every`` steps). Divergence (a
non-finite loss, or a mean loss above ``diverge_factor`` x the loss at init) is checked
there too; a diverged run stops early, is recorded as such, and is not an error.

Resume: a checkpoint of the same config in the output folder is picked up where it stopped.
Batches depend only on (seed, step) and the checkpoint holds model, optimizer, RNG, history
and accumulators, so a resumed run ends exactly where an uninterrupted one does (on CPU).
"""

from __future__ import annotations

import copy
import math
import platform
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from tqdm.auto import tqdm

from . import __version__
from .checkpoint import config_hash, load_checkpoint, save_checkpoint, set_rng_state
from .data import load_data, train_batch, val_windows
from .io import write_csv, write_json
from .methods import MethodStack, configure, load_stack
from .model import GPT
from .optim import build_optimizer, learning_rate
from . import curvature  # noqa: F401  (registers its probe)
from .probes import ProbeContext, run_probes
from .spikes import history_spikes

METRICS_NAME, HISTORY_NAME = "metrics.json", "history.csv"


class DataMismatchError(ValueError):
    """The prepared data folder was built from different data settings than the run asks for."""


@dataclass
class LossContext:
    """What a method's ``loss`` hook sees; ``log_z`` is computed once and shared."""

    logits: torch.Tensor
    targets: torch.Tensor
    cache: dict = field(default_factory=dict)

    @property
    def log_z(self) -> torch.Tensor:
        if "log_z" not in self.cache:
            self.cache["log_z"] = torch.logsumexp(self.logits.float(), dim=-1)
        return self.cache["log_z"]


@dataclass
class TrainState:
    """What a method's ``on_step`` hook sees after each optimizer step."""

    step: int
    tokens: int
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    config: dict


def resolve_device(config: dict) -> tuple[str, str]:
    """(device, precision): auto picks CUDA with bf16 autocast when there is a GPU."""
    train = config["train"]
    device = train["device"]
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device is 'cuda' but no CUDA device is available")
    precision = train["precision"]
    if precision == "auto":
        precision = "bf16" if device == "cuda" else "fp32"
    return device, precision


def make_accelerator(device: str, precision: str) -> Accelerator:
    # Accelerate keeps process-wide state; reset it so several runs in one process work.
    AcceleratorState._reset_state(reset_partial_state=True)
    return Accelerator(cpu=device == "cpu", mixed_precision="bf16" if precision == "bf16" else "no")


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())


@torch.no_grad()
def evaluate(model: GPT, windows: torch.Tensor, batch_size: int, accelerator: Accelerator) -> dict[str, Any]:
    """Mean loss on the fixed validation windows, with max attention logits and log Z."""
    model.capture(True)
    losses, log_z, layer_max = [], [], None
    for start in range(0, len(windows), batch_size):
        batch = windows[start:start + batch_size].to(accelerator.device)
        with accelerator.autocast():
            logits = model(batch[:, :-1])
        losses.append(cross_entropy(logits, batch[:, 1:]) * len(batch))
        log_z.append(torch.logsumexp(logits.float(), dim=-1).mean() * len(batch))
        maxes = torch.stack([m for m in model.attention_max_logits() if m is not None])
        layer_max = maxes if layer_max is None else torch.maximum(layer_max, maxes)
    model.capture(False)
    n = len(windows)
    values = torch.stack([sum(losses) / n, sum(log_z) / n]).cpu().tolist()
    per_layer = layer_max.cpu().tolist()
    return {"loss": values[0], "log_z": values[1], "attn_logit_max_per_layer": per_layer,
            "attn_logit_max": max(per_layer)}


def prepare_config(config: dict, stack: MethodStack, vocab_size: int) -> dict:
    """Fill what the data decides (vocab size), then apply the methods' configure hooks."""
    config = copy.deepcopy(config)
    config["model"]["vocab_size"] = vocab_size
    return configure(config, stack)


def check_data(manifest: dict, config: dict, data_dir: Path) -> None:
    if manifest.get("data") != config["data"]:
        raise DataMismatchError(
            f"{data_dir} was prepared from data settings {manifest.get('data')}, but the run asks for "
            f"{config['data']}; prepare it again (stabench prepare) or point --data elsewhere")


def versions() -> dict[str, str]:
    return {"python": platform.python_version(), "torch": str(torch.__version__), "stabench": __version__,
            "numpy": np.__version__}


def is_probe_step(step: int, train: dict) -> bool:
    return step % train["probe_every"] == 0 or step % train["eval_every"] == 0 or step == train["steps"]


def train_run(config: dict, out_dir: str | Path, data_dir: str | Path, *, progress: bool = True) -> dict:
    """Train (or resume, or just report) one run; return its metrics."""
    start_time = time.perf_counter()
    out_dir, data_dir = Path(out_dir), Path(data_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stack = load_stack(config["method_spec"]["use"], config["method_spec"]["args"])
    data = load_data(data_dir)
    check_data(data.manifest, config, data_dir)
    config = prepare_config(config, stack, data.vocab_size)
    train, seed = config["train"], config["seed"]
    fingerprint = config_hash(config)

    state = load_checkpoint(out_dir, fingerprint)
    if state is not None and state.get("finished"):
        write_json(out_dir / METRICS_NAME, state["metrics"])  # already computed: never lose it
        write_csv(out_dir / HISTORY_NAME, state["history"])
        return state["metrics"]

    device, precision = resolve_device(config)
    accelerator = make_accelerator(device, precision)
    config["train"]["world_size"] = accelerator.num_processes  # for schedules on tokens; not hashed
    torch.manual_seed(seed)
    model = GPT(**config["model"])
    for hook, args in stack.composed("transform_model"):
        hook(model, config, args)
    model.to(accelerator.device)
    optimizer = build_optimizer(model, config, stack, accelerator.device)
    model, optimizer = accelerator.prepare(model, optimizer)
    raw_model: GPT = accelerator.unwrap_model(model)
    forward = torch.compile(model) if train["compile"] else model
    params = list(model.parameters())  # clipping skips those without grad (frozen or locked)
    windows = torch.from_numpy(val_windows(data.val, train["eval_windows"], train["seq_len"]).astype(np.int64))
    extra_probes = {name: fn for hook, args in stack.composed("probes") for name, fn in hook(args).items()}
    batch_hook = stack.exclusive("transform_batch")

    if state is not None:
        raw_model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"])
        step, tokens, history = state["step"], state["tokens"], state["history"]
        init_loss, elapsed, train_seconds = state["init_loss"], state["elapsed"], state["train_seconds"]
        loss_sum = state["loss_sum"].to(accelerator.device)
        loss_count, resumed_from = state["loss_count"], step
    else:
        step, tokens, elapsed, train_seconds, resumed_from = 0, 0, 0.0, 0.0, None
        init = evaluate(raw_model, windows, train["eval_batch_size"], accelerator)
        init_loss = init["loss"]
        history = [{"step": 0, "tokens": 0, "val_loss": init_loss, "attn_logit_max": init["attn_logit_max"]}]
        loss_sum, loss_count = torch.zeros(2, device=accelerator.device), 0

    def checkpoint(finished: bool = False, metrics: dict | None = None) -> None:
        if not accelerator.is_main_process:  # one writer per run (DDP launches several processes)
            return
        save_checkpoint(out_dir, {
            "config_hash": fingerprint, "finished": finished, "metrics": metrics or {},
            "model": raw_model.state_dict(), "optimizer": optimizer.state_dict(),
            "step": step, "tokens": tokens, "history": history, "init_loss": init_loss,
            "loss_sum": loss_sum.detach().cpu(), "loss_count": loss_count,
            "elapsed": elapsed + time.perf_counter() - start_time, "train_seconds": train_seconds})

    diverged_at = None
    bar = tqdm(total=train["steps"], initial=step, disable=not progress, mininterval=2.0, file=sys.stderr,
               desc=f"{config['method']} {config['size']} lr={config['lr']:g} seed={seed}", unit="step")
    model.train()
    loop_start = time.perf_counter()
    while step < train["steps"] and diverged_at is None:
        step += 1
        probing = is_probe_step(step, train)
        optimizer.zero_grad(set_to_none=True)  # here, so probes still see this step's gradients
        batch = torch.from_numpy(train_batch(data.train, step, train["batch_size"], train["seq_len"], seed,
                                             accelerator.process_index, accelerator.num_processes))
        if accelerator.device.type == "cuda":
            batch = batch.pin_memory()  # so the copy below is asynchronous
        batch = batch.to(accelerator.device, non_blocking=True)
        if batch_hook:
            batch = batch_hook[0](batch, step, config, batch_hook[1])
        lr = learning_rate(step, tokens, config, stack)
        for group in optimizer.param_groups:
            group["lr"] = lr * group["lr_mult"]
        raw_model.capture(probing)
        with accelerator.autocast():
            logits = forward(batch[:, :-1])
        targets = batch[:, 1:]
        loss = lm_loss = cross_entropy(logits, targets)
        if stack.composed("loss"):
            ctx = LossContext(logits, targets)
            loss = loss + sum(hook(ctx, args) for hook, args in stack.composed("loss"))
        accelerator.backward(loss)
        grad_norm = accelerator.clip_grad_norm_(params, train_grad_clip(config)) if params else None
        optimizer.step()
        tokens += targets.numel() * accelerator.num_processes
        # The language-model loss (comparable across methods) and the optimized total.
        loss_sum += torch.stack([lm_loss.detach(), loss.detach().float()])
        loss_count += 1
        for hook, args in stack.composed("on_step"):
            hook(step, TrainState(step, tokens, raw_model, optimizer, config), args)
        bar.update(1)
        if not probing:
            continue
        mean_loss = loss_sum / loss_count
        if accelerator.num_processes > 1:  # every rank must agree on divergence, or DDP hangs
            mean_loss = accelerator.reduce(mean_loss, reduction="mean")
        row = run_probes(ProbeContext(step, tokens, lr, mean_loss[0], grad_norm, raw_model, optimizer,
                                      logits.detach(), config, batch=batch, autocast=accelerator.autocast),
                         extra_probes)
        if stack.composed("loss"):
            row["loss_total"] = mean_loss[1].item()
        row["time"] = train_seconds + time.perf_counter() - loop_start  # probes synced: true time
        raw_model.capture(False)
        loss_sum.zero_()
        loss_count = 0
        if not math.isfinite(row["loss"]) or row["loss"] > train["diverge_factor"] * init_loss:
            diverged_at = step
        elif step % train["eval_every"] == 0 or step == train["steps"]:
            row["val_loss"] = evaluate(raw_model, windows, train["eval_batch_size"], accelerator)["loss"]
            model.train()
        history.append(row)
        bar.set_postfix(loss=f"{row['loss']:.3f}", refresh=False)
        if step % train["checkpoint_every"] == 0 and step < train["steps"] and diverged_at is None:
            train_seconds += time.perf_counter() - loop_start
            checkpoint()
            loop_start = time.perf_counter()
    train_seconds += time.perf_counter() - loop_start
    bar.close()

    final = evaluate(raw_model, windows, train["eval_batch_size"], accelerator)
    first_tokens, first_seconds = (state["tokens"], state["train_seconds"]) if state else (0, 0.0)
    metrics = run_metrics(
        config, stack, raw_model, history, final, init_loss=init_loss, diverged_at=diverged_at, step=step,
        tokens=tokens, wall_seconds=elapsed + time.perf_counter() - start_time, train_seconds=train_seconds,
        tokens_per_second=(tokens - first_tokens) / max(train_seconds - first_seconds, 1e-9),
        resumed_from=resumed_from, device=device, precision=precision)
    checkpoint(finished=True, metrics=metrics)
    if accelerator.is_main_process:
        write_csv(out_dir / HISTORY_NAME, history)
        write_json(out_dir / METRICS_NAME, metrics)
    return metrics


def run_metrics(config: dict, stack: MethodStack, model: GPT, history: list[dict], final: dict, *,
                init_loss: float, diverged_at: int | None, step: int, tokens: int, wall_seconds: float,
                train_seconds: float, tokens_per_second: float, resumed_from: int | None, device: str,
                precision: str) -> dict:
    """The metrics.json of a finished run (shared by single and packed training)."""
    diverged = diverged_at is not None or not math.isfinite(final["loss"])
    return {
        "benchmark": config["benchmark"], "method": config["method"], "size": config["size"],
        "lr": config["lr"], "seed": config["seed"],
        "final_val_loss": final["loss"], "init_loss": init_loss, "diverged": diverged,
        "diverged_at_step": diverged_at if diverged_at is not None else (step if diverged else None),
        "steps": step, "tokens": tokens, "wall_seconds": wall_seconds, "train_seconds": train_seconds,
        "tokens_per_second": tokens_per_second,
        "max_attn_logit": final["attn_logit_max"], "max_attn_logit_per_layer": final["attn_logit_max_per_layer"],
        "final_log_z": final["log_z"],
        "final_train_loss": next((r["loss"] for r in reversed(history) if "loss" in r), None),
        "n_params": model.num_parameters(non_embedding=False),
        "n_params_non_embedding": model.num_parameters(non_embedding=True),
        **history_spikes(history, config["probes"]),
        "resumed_from_step": resumed_from, "config": config, "methods": stack.describe(),
        "versions": versions(), "device": device_name(device), "precision": precision,
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def train_grad_clip(config: dict) -> float:
    clip = config["optimizer"]["grad_clip"]
    return clip if clip > 0 else float("inf")


def device_name(device: str) -> str:
    if device == "cuda":
        return f"cuda ({torch.cuda.get_device_name()})"
    return f"cpu ({torch.get_num_threads()} threads, {platform.processor() or platform.machine()})"
