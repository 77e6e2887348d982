"""Command line: ``stabench run | prepare | train | describe | methods | build-tasks | eval | export``.

Everything that can be checked before training is checked first (benchmark schema, method
names and arguments, size, corpus), so bad input costs seconds and prints one line; usage
errors too. Every command goes offline unless its benchmark needs the hub
(``stabench.benchmark.network_for``), and dies with the workflow that started it (``stabench.lifeline``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch
import yaml

from . import lifeline, paths
from .benchmark import load_for_use, network_for, network_for_data
from .config import SHIPPED_DIR, ConfigError, method_specs, resolve_benchmark_path, size_config
from .data import DataError, prepare_data
from .data.prepare import check_prepared_for
from .gpu_pool import gpu_slots
from .io import write_json, write_text
from .loop import CONTINUE_EXIT, DataMismatchError, check_own_folders, check_same_ensemble, train
from .methods import MethodError, exc_text, hook_failure, known_methods, load_module, load_stack
from .provenance import method_docs, provenance
from .runspec import RunSpec, read_spec, read_spec_file, resolve_run, spec_difference, write_spec
from .speed import run_speed, shape_sizes

USER_ERRORS = (ConfigError, MethodError, DataError, DataMismatchError)


def default_data_dir(benchmark: dict) -> Path:
    return paths.data_dir(paths.results_dir(benchmark))


def load(args) -> dict:
    """The command's validated benchmark (with --set) and its methods (a bad one fails here, as
    in the workflow), and offline mode unless it needs the hub."""
    benchmark = load_for_use(args.benchmark, args.set)
    for spec in method_specs(benchmark).values():
        load_stack(spec["use"], spec["args"])
    network_for(benchmark)
    return benchmark


def ensure_data(benchmark: dict, data_dir: Path | None, progress: bool, replace: bool = False) -> Path:
    """The prepared data folder, prepared first if needed. Only ``stabench prepare`` (the
    workflow's data rule) replaces a folder prepared from other data settings; the commands
    that only read it refuse, so a --data typo never overwrites another benchmark's data."""
    data_dir = data_dir or default_data_dir(benchmark)
    if not replace:
        check_prepared_for(benchmark["data"], data_dir)
    prepare_data(benchmark["data"], data_dir, progress=progress)  # no-op when already prepared
    return data_dir


def cmd_prepare(args) -> int:
    benchmark = load(args)
    data_dir = ensure_data(benchmark, args.out, progress=not args.no_progress, replace=True)
    print(f"data ready in {data_dir}")
    return 0


def without_options(argv: list[str], names: tuple[str, ...]) -> list[str]:
    """argv minus the given options, in both '--opt value' and '--opt=value' forms."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in names:
            skip = True
        elif not arg.startswith(tuple(f"{n}=" for n in names)):
            out.append(arg)
    return out


def launch_on_gpus(args, argv: list[str]) -> int:
    """Hold free GPU slots from the lock pool, then train on them (DDP when several)."""
    with gpu_slots(args.gpus, args.runs_per_gpu) as alloc:
        os.environ["CUDA_VISIBLE_DEVICES"] = alloc.visible_devices
        inner = without_options(argv, ("--gpus", "--runs-per-gpu"))
        if args.gpus == 1:
            return main(inner, started=args.started)
        if getattr(args, "stop_after_minutes", None):  # the processes start now: what is left of the time
            left = max(args.stop_after_minutes - (time.monotonic() - args.started) / 60, 1e-3)
            inner = [*without_options(inner, ("--stop-after-minutes",)), "--stop-after-minutes", f"{left:.4f}"]
        command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
                   "--num_processes", str(args.gpus), "--main_process_port", str(alloc.port),
                   "-m", "stabench", *inner]
        print(f"stabench: GPUs {alloc.visible_devices}, port {alloc.port}: {' '.join(command)}", file=sys.stderr)
        return subprocess.call(command)


def training_benchmark(args) -> dict:
    """Threads as Snakemake gives them, then the validated benchmark (train and train-pack)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    return load(args)


def world_size() -> int:
    """Processes of this launch (``accelerate launch`` sets WORLD_SIZE), part of a run's identity."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def report(metrics: dict, out: Path) -> str:
    status = f"diverged at step {metrics['diverged_at_step']}" if metrics["diverged"] else "finished"
    return (f"{metrics['method']} {metrics['size']} lr={metrics['lr']:g} seed={metrics['seed']}: {status}; "
            f"val loss {metrics['final_val_loss']:.4f} (init {metrics['init_loss']:.4f}), "
            f"{metrics['tokens_per_second']:.0f} tok/s, {metrics['wall_seconds']:.1f} s -> {out}")


def claim_folder(folder: Path, run: RunSpec, force: bool) -> None:
    """Make ``folder``'s run.json name ``run`` before anything is trained there. A folder the
    workflow owns that is for another run is refused (one line naming both) unless ``force``:
    then its run.json stays the workflow's, which notices the foreign result (analysis) and
    retrains the run when its job runs again. A folder of earlier hand-run trainings follows
    the new run, as the recorder retrains a changed run."""
    try:
        found = read_spec(folder)
    except ConfigError:
        found = None  # a damaged run.json protects nothing: it is written again
    if found is not None:
        theirs, owner = found
        if theirs.identity != run.identity and owner == "workflow":
            if not force:
                raise ConfigError(f"{folder} is the workflow's folder of run {theirs.identity} "
                                  f"({spec_difference(run, theirs)}); refusing to train run {run.identity} there: "
                                  "give another --out, or --force to replace its result")
            return
    write_spec(folder, run, owner="cli")


def cmd_train(args) -> int:
    if args.gpus:
        return launch_on_gpus(args, args.argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.spec:
        return train_specs(args)
    missing = [name for name in ("benchmark", "method", "size", "lr", "out") if getattr(args, name) is None]
    if missing:
        raise ConfigError(f"stabench train: give --spec RUN_JSON, or a benchmark with --method, --size, --lr and "
                          f"--out (missing: {', '.join(missing)})")
    benchmark = load(args)
    run = resolve_run(benchmark, method=args.method, size=args.size, lr=args.lr, seed=args.seed,
                      world_size=world_size())
    claim_folder(args.out, run, args.force)
    data_dir = ensure_data(benchmark, args.data, progress=not args.no_progress)
    metrics, = train([run], [args.out], data_dir, progress=not args.no_progress, deadline=deadline(args))
    if metrics is None:
        return CONTINUE_EXIT  # stopped at the deadline (the loop said where)
    print(report(metrics, args.out))
    return 0


def deadline(args) -> float | None:
    """The ``time.monotonic()`` at which training stops (--stop-after-minutes), or None."""
    return args.started + 60 * args.stop_after_minutes if args.stop_after_minutes else None


def train_specs(args) -> int:
    """Train the runs of the given run.json files (each in its own folder), as one ensemble
    when there are several: the workflow's way, which resolves nothing again."""
    given = [name for name in ("benchmark", "method", "size", "lr", "out") if getattr(args, name) is not None]
    if given or args.set:
        raise ConfigError(f"stabench train --spec: the run.json says everything; drop {', '.join(given) or '--set'}")
    runs = [read_spec_file(path)[0] for path in args.spec]
    folders = [Path(path).parent for path in args.spec]
    check_same_ensemble(runs)
    check_own_folders(folders)
    if world_size() != runs[0].train.world_size:
        raise ConfigError(f"{args.spec[0]}: resolved for {runs[0].train.world_size} processes, {world_size()} running")
    network_for_data(runs[0].data.to_dict())
    data_dir = ensure_data({"name": runs[0].benchmark, "data": runs[0].data.to_dict()}, args.data,
                           progress=not args.no_progress)
    done = train(runs, folders, data_dir, progress=not args.no_progress, deadline=deadline(args))
    for metrics, out in zip(done, folders):
        if metrics is not None:
            print(report(metrics, out))
    return 0 if None not in done else CONTINUE_EXIT  # stopped at the deadline (the loop said where)


def parse_pack_run(text: str) -> tuple[float, int, Path]:
    try:
        lr, seed, out = text.split(":", 2)
        return float(lr), int(seed), Path(out)
    except ValueError:
        raise ConfigError(f"--run {text!r}: expected LR:SEED:OUT_DIR, e.g. 0.01:0:results/x/runs/a/s/lr0.01-s0") from None


def cmd_train_pack(args) -> int:
    if args.gpus:
        return launch_on_gpus(args, args.argv)
    benchmark = training_benchmark(args)
    members = [parse_pack_run(text) for text in args.run]
    runs = [resolve_run(benchmark, method=args.method, size=args.size, lr=lr, seed=seed, world_size=world_size())
            for lr, seed, _ in members]
    check_same_ensemble(runs)  # before anything is printed or prepared
    check_own_folders([out for *_, out in members])
    for run, (*_, out) in zip(runs, members):
        claim_folder(out, run, args.force)
    data_dir = ensure_data(benchmark, args.data, progress=not args.no_progress)
    reason = runs[0].stack.unpackable_reason()
    print(f"{args.method} {args.size}: {len(runs)} runs "
          + (f"trained one at a time ({reason})" if reason else "trained together as one ensemble"), file=sys.stderr)
    for metrics, (_, _, out) in zip(train(runs, [o for *_, o in members], data_dir, progress=not args.no_progress),
                                    members):
        print(report(metrics, out))
    return 0


def cmd_methods(args) -> int:
    if args.benchmark:
        benchmark = load_for_use(args.benchmark)
        for label, spec in method_specs(benchmark).items():
            stack = load_stack(spec["use"], spec["args"])
            print(f"{label:32s} {' + '.join(f'{m.name} v{m.version}' for m in stack.methods)}")
        return 0
    broken = 0
    for name in known_methods():
        try:
            module = load_module(name)
        except MethodError as exc:  # one broken file must not hide the others
            print(f"stabench: error: {exc}", file=sys.stderr)
            broken += 1
            continue
        summary = (module.__doc__ or "").strip().splitlines()[0]
        print(f"{name:24s} v{module.VERSION:6s} {summary}")
    return 1 if broken else 0


RUN_HELP = """Run the workflow on this folder: Snakemake with the workflow that travels with the package
(the clone's own, in an editable install) and this folder as its working directory, so
results/<benchmark>/ is written here. BENCHMARK (first, optional: the default benchmark or the
profile's) becomes --config benchmark=BENCHMARK; every other argument goes to Snakemake as given,
e.g. `stabench run smoke --cores 2`, `stabench run cpu -n`, `stabench run proxies --profile gpu
--config gpus=1`. Methods, benchmarks and claims come from ./methods, ./benchmarks and ./claims
of this folder first, then from the package; --profile NAME names ./profiles/NAME or else the
package's profiles/NAME. Snakemake's own options: snakemake --help."""


def _with_shipped_profile(option: str, value: str) -> list[str]:
    """--profile NAME or profiles/NAME: this folder's, else the one shipped with the package."""
    shipped = SHIPPED_DIR / "profiles" / Path(value).name
    if not Path(value).exists() and value in (shipped.name, f"profiles/{shipped.name}") and shipped.is_dir():
        value = str(shipped)
    return [f"{option}={value}"] if "=" in option else [option, value]


def cmd_run(args) -> int:
    rest = list(args.snakemake_args)
    if "-h" in rest or "--help" in rest:
        print(f"usage: stabench run [BENCHMARK] [SNAKEMAKE_ARGS ...]\n\n{RUN_HELP}")
        return 0
    benchmark = rest.pop(0) if rest and not rest[0].startswith("-") else None
    argv: list[str] = []
    while rest:
        arg = rest.pop(0)
        if arg == "--":
            argv += [arg, *rest]
            break
        if arg == "--profile" and rest:
            argv += _with_shipped_profile(arg, rest.pop(0))
        elif arg.startswith("--profile="):
            argv += _with_shipped_profile("--profile=", arg.removeprefix("--profile="))
        else:
            argv.append(arg)
    if benchmark is not None:
        resolve_benchmark_path(benchmark)  # an unknown name: one line, before Snakemake starts
        given = [i for i, a in enumerate(argv) if a in ("--config", "-C")]
        if given:  # a second --config would replace the first: one list
            argv.insert(given[0] + 1, f"benchmark={benchmark}")
        else:
            argv = ["--config", f"benchmark={benchmark}", *argv]
    snakefile = (SHIPPED_DIR / "Snakefile").resolve()
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(snakefile), "--directory", str(Path.cwd()), *argv]
    return subprocess.run(cmd).returncode


def cmd_describe(args) -> int:
    benchmark = load(args)
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "method_docs.json", method_docs(benchmark))
    write_json(args.out / "provenance.json", provenance())
    write_text(args.out / "benchmark.yaml", yaml.safe_dump(benchmark, sort_keys=False))
    print(f"wrote method_docs.json, provenance.json and benchmark.yaml (resolved) to {args.out}")
    return 0


def _note(text: str) -> str:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"{text!r}: expected KEY=TEXT")
    return text


def cmd_make_reference(args) -> int:
    from .reference import make_reference
    notes = dict(note.split("=", 1) for note in args.note)
    out = make_reference(args.results, args.out, notes)
    print(f"wrote the reference results of {args.results} to {out}")
    return 0


def cmd_build_tasks(args) -> int:
    from .evaluation.tasks import build_tasks

    benchmark = load(args)
    data_dir = ensure_data(benchmark, args.data, progress=not args.no_progress)
    out = args.out or paths.tasks_dir(paths.results_dir(benchmark))
    manifest = build_tasks(data_dir, out, n_examples=benchmark["eval"]["n_examples"], seed=benchmark["eval"]["seed"])
    counts = ", ".join(f"{t}: {v['examples']} examples" for t, v in manifest["tasks"].items())
    print(f"eval tasks from {manifest['val_docs']} held-out documents -> {out} ({counts})")
    return 0


def cmd_eval(args) -> int:
    if not args.gpus:
        return evaluate(args)
    if args.gpus != 1:
        raise ConfigError(f"stabench eval --gpus {args.gpus}: an evaluation uses one GPU (give --gpus 1)")
    # the same lock pool as training, so an evaluation never lands on a GPU a run is using
    with gpu_slots(1, args.runs_per_gpu) as alloc:
        os.environ["CUDA_VISIBLE_DEVICES"] = alloc.visible_devices
        print(f"stabench: evaluating on GPU {alloc.visible_devices} (pool slot {alloc.first_slot})", file=sys.stderr)
        return evaluate(args)


def evaluate(args) -> int:
    from .evaluation.runner import evaluate_runs, write_record

    if args.threads:
        torch.set_num_threads(args.threads)
    benchmark = load(args)
    cfg = benchmark["eval"]
    data_dir = args.data or default_data_dir(benchmark)
    tasks_dir = args.tasks_dir or paths.tasks_dir(paths.results_dir(benchmark))
    if not args.best and len(args.runs) != 1:
        raise ConfigError(f"stabench eval: give one --runs folder, or several with --best (got {len(args.runs)})")
    tasks = args.tasks.split(",") if args.tasks else cfg["tasks"]
    record = evaluate_runs(args.runs, data_dir=data_dir, tasks_dir=tasks_dir, tasks=tasks,
                           init_tasks=cfg["init_tasks"], limit=cfg["limit"], batch_size=cfg["batch_size"],
                           device=args.device or cfg["device"], select="best" if args.best else "single",
                           l0=benchmark["analysis"]["l0"], progress=not args.no_progress)
    write_record(record, args.out)
    scores = ", ".join(f"{k} {v:.4g}" for k, v in record["scores"].items() if "stderr" not in k and v is not None)
    skipped = [t for t, r in record.get("tasks", {}).items() if r.get("status") == "skipped"]
    where = f"{record['method']} {record['size']} lr={record['lr']} seed={record['seed']}" \
        if record.get("run_dir") else f"{record['method']} {record['size']}"
    print(f"{where}: {record['status']}" + (f"; {scores}" if scores else "")
          + (f"; skipped {', '.join(skipped)}" if skipped else "") + f" -> {args.out}")
    return 0


def cmd_export(args) -> int:
    from .export import export_run

    config = export_run(args.run_dir, args.out, data_dir=args.data)
    print(f"{args.run_dir} -> {args.out}: transformers GPT2LMHeadModel, {config['n_layer']} layers, "
          f"d={config['n_embd']}, vocab {config['vocab_size']}, context {config['n_positions']}")
    return 0


def cmd_speed(args) -> int:
    benchmark = load(args)
    if args.shape:
        benchmark["sizes"] = shape_sizes(args.shape)
    sizes = args.sizes or list(benchmark["sizes"])
    for size in sizes:
        size_config(benchmark, size)
    for key, value in (("batch_size", args.batch), ("seq_len", args.seq)):
        if value:
            benchmark["train"][key] = value
    if args.vocab:
        benchmark["data"]["vocab_size"] = args.vocab
    modes = {"off": [False], "on": [True], "both": [False, True]}[args.compile]
    method = args.method or next(iter(method_specs(benchmark)))
    run_speed(benchmark, sizes, method=method, steps=args.steps, warmup=args.warmup,
              compile_modes=modes, packs=args.pack, lr=args.lr, out_json=args.out)
    return 0


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line, like every other stabench error (argparse prints the usage too)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} -h)\n")


def _number(kind: type, low: int):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"got {text!r}; allowed: an integer >= {low}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"got {text!r}; allowed: an integer >= {low}")
        return value
    return parse


POSITIVE, COUNT = _number(int, 1), _number(int, 0)


def MINUTES(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"got {text!r}; allowed: minutes > 0, e.g. 1430 or 0.05")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="stabench", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p, benchmark_required: bool = True):
        p.add_argument("benchmark", nargs=None if benchmark_required else "?",
                       help="benchmark name (benchmarks/NAME.yaml) or path to a YAML file")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a benchmark field, e.g. --set train.steps=300 (repeatable)")
        p.add_argument("--no-progress", action="store_true", help="no progress bars")

    p = sub.add_parser("prepare", help="build tokenizer and token arrays for a benchmark")
    common(p)
    p.add_argument("--out", type=Path, help="data folder (default results/<benchmark>/data)")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("train", help="train one run (method, size, lr, seed) of a benchmark, or the runs of run.json files")
    common(p, benchmark_required=False)
    p.add_argument("--spec", action="append", default=[], type=Path, metavar="RUN_JSON",
                   help="a run folder's run.json (the workflow writes them): train that run there; several: one ensemble")
    p.add_argument("--method", help="a method label of the benchmark, or names joined by +")
    p.add_argument("--size", help="a size named in the benchmark")
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument("--seed", type=COUNT, default=0)
    p.add_argument("--out", type=Path, help="run folder for run.json, metrics.json, history.csv, checkpoint")
    p.add_argument("--force", action="store_true",
                   help="train into a workflow's run folder that is for another run (its result is replaced)")
    p.add_argument("--data", type=Path, help="prepared data folder (default results/<benchmark>/data)")
    p.add_argument("--threads", type=POSITIVE, help="torch CPU threads (Snakemake passes its thread count)")
    p.add_argument("--gpus", type=COUNT, default=0,
                   help="take this many GPUs from the lock pool (stabench/gpu_pool.py); >1 runs DDP")
    p.add_argument("--runs-per-gpu", type=POSITIVE, default=1, help="runs sharing one GPU (pool slots per GPU)")
    p.add_argument("--stop-after-minutes", type=MINUTES, metavar="M",
                   help=f"M minutes after this command started, save the runs' checkpoints at the "
                        f"current step and exit {CONTINUE_EXIT}; the same command continues them (a cluster job's limit)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("train-pack", help="train runs differing only in LR/seed together (batched ensemble)")
    common(p)
    p.add_argument("--method", required=True)
    p.add_argument("--size", required=True)
    p.add_argument("--run", action="append", required=True, metavar="LR:SEED:OUT_DIR",
                   help="one member of the pack (repeat)")
    p.add_argument("--data", type=Path, help="prepared data folder (default results/<benchmark>/data)")
    p.add_argument("--threads", type=POSITIVE)
    p.add_argument("--gpus", type=COUNT, default=0, help="take a GPU from the lock pool (packs use one GPU)")
    p.add_argument("--runs-per-gpu", type=POSITIVE, default=1)
    p.add_argument("--force", action="store_true",
                   help="train into workflow run folders that are for other runs (their results are replaced)")
    p.set_defaults(func=cmd_train_pack)

    p = sub.add_parser("describe", help="write method docs, provenance and the resolved benchmark")
    common(p)
    p.add_argument("--out", type=Path, required=True, help="folder for the three files")
    p.set_defaults(func=cmd_describe)

    p = sub.add_parser("make-reference", help="copy a finished workflow run's tables as reference results "
                       "(runs.csv, leaderboard.csv, claims.csv, provenance.json)")
    p.add_argument("results", type=Path, help="the run's results/<benchmark>/ folder")
    p.add_argument("--out", type=Path, required=True, help="the reference folder, e.g. reference/cpu")
    p.add_argument("--note", action="append", default=[], type=_note, metavar="KEY=TEXT",
                   help="a line for provenance.json, e.g. 'wall time=16 min on 2 cores' (repeatable)")
    p.set_defaults(func=cmd_make_reference)

    p = sub.add_parser("build-tasks", help="build the offline zero-shot tasks from the held-out documents")
    common(p)
    p.add_argument("--data", type=Path, help="prepared data folder (default results/<benchmark>/data)")
    p.add_argument("--out", type=Path, help="tasks folder (default results/<benchmark>/eval_tasks)")
    p.set_defaults(func=cmd_build_tasks)

    p = sub.add_parser("eval", help="zero-shot evaluation (lm-eval) of a finished run, or of the best of several")
    common(p)
    p.add_argument("--runs", nargs="+", required=True, type=Path, help="run folder(s) holding metrics.json")
    p.add_argument("--best", action="store_true",
                   help="evaluate only the best-LR run among --runs (the runs of one method and size)")
    p.add_argument("--out", type=Path, required=True, help="the JSON record to write")
    p.add_argument("--data", type=Path, help="prepared data folder (default results/<benchmark>/data)")
    p.add_argument("--tasks-dir", type=Path, help="offline tasks folder (default results/<benchmark>/eval_tasks)")
    p.add_argument("--tasks", help="comma-separated tasks instead of the benchmark's eval.tasks")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="instead of the benchmark's eval.device")
    p.add_argument("--threads", type=POSITIVE, help="torch CPU threads (Snakemake passes its thread count)")
    p.add_argument("--gpus", type=COUNT, default=0,
                   help="1: wait for a free GPU slot in the lock pool (stabench/gpu_pool.py), as train --gpus does")
    p.add_argument("--runs-per-gpu", type=POSITIVE, default=1, help="runs sharing one GPU (pool slots per GPU)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("speed", help="tokens/s and MFU of the trainer on random tokens")
    common(p)
    p.add_argument("--sizes", nargs="+", help="sizes of the benchmark (default: all)")
    p.add_argument("--shape", nargs="+", metavar="DxLxH", help="explicit shapes instead, e.g. 128x2x2 512x8x8")
    p.add_argument("--batch", type=POSITIVE, help="batch size (default: the benchmark's)")
    p.add_argument("--seq", type=POSITIVE, help="sequence length (default: the benchmark's)")
    p.add_argument("--vocab", type=POSITIVE, help="vocabulary size (default: the benchmark's)")
    p.add_argument("--steps", type=POSITIVE, default=100)
    p.add_argument("--warmup", type=COUNT, default=30, help="steps excluded from the timing")
    p.add_argument("--compile", choices=["off", "on", "both"], default="both")
    p.add_argument("--method", help="a method label of the benchmark (default: its first method)")
    p.add_argument("--pack", type=POSITIVE, nargs="+", default=[1], metavar="K",
                   help="members of one ensemble (K peak LRs a factor 2^(1/4) apart around --lr); several: each")
    p.add_argument("--lr", type=float, default=1e-3, help="peak LR of a single run, centre of a pack's LRs")
    p.add_argument("--out", type=Path, help="write the results as JSON")
    p.set_defaults(func=cmd_speed)

    p = sub.add_parser("export", help="write a finished run's model as a Hugging Face (transformers GPT-2) model")
    p.add_argument("run_dir", type=Path, help="run folder holding metrics.json and checkpoint.pt")
    p.add_argument("out", type=Path, help="folder for config.json, model.safetensors and the tokenizer")
    p.add_argument("--data", type=Path, help="the run's prepared data folder (default results/<benchmark>/data)")
    p.set_defaults(func=cmd_export)

    # Every argument after `run` is Snakemake's (no option of its own, prefix '+'): cmd_run sorts them.
    p = sub.add_parser("run", help="run the workflow on this folder: [BENCHMARK] [SNAKEMAKE_ARGS ...]",
                       usage="stabench run [BENCHMARK] [SNAKEMAKE_ARGS ...]", description=RUN_HELP,
                       prefix_chars="+", add_help=False)
    p.add_argument("snakemake_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("methods", help="list available methods, or a benchmark's methods")
    p.add_argument("benchmark", nargs="?")
    p.set_defaults(func=cmd_methods)
    return parser


DEBUG_NAME = "stabench-error.log"  # a failing method hook's traceback, in the run folder


def run_folders(args) -> list[Path]:
    """The run folders of a train or train-pack command (where a debug file goes)."""
    if args.func is cmd_train:
        return [Path(args.out)] if args.out else [Path(path).parent for path in args.spec]
    if args.func is cmd_train_pack:
        return [out for text in args.run if (out := _pack_out(text))]
    return []


def _pack_out(text: str) -> Path | None:
    try:
        return parse_pack_run(text)[2]
    except ConfigError:
        return None


def run_command(args) -> int:
    """The command; a method hook that raises becomes one line naming the method, the hook and
    the exception, its traceback written to each run folder's DEBUG_NAME."""
    try:
        return args.func(args)
    except USER_ERRORS:
        raise
    except Exception as exc:
        where = hook_failure(exc)
        if where is None or out_of_memory(exc):
            raise
        method, hook = where
        trace = "".join(traceback.format_exception(exc))
        written = []
        for folder in run_folders(args):
            try:
                write_text(folder / DEBUG_NAME, trace)
                written.append(str(folder / DEBUG_NAME))
            except OSError:
                pass
        raise MethodError(f"method {method!r}: its hook {hook!r} raised {type(exc).__name__}: {exc_text(exc)}"
                          + (f" (traceback in {', '.join(written)})" if written else "")) from None


def out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, (MemoryError, torch.cuda.OutOfMemoryError)) or \
        (isinstance(exc, RuntimeError) and "allocate" in str(exc))


def main(argv: list[str] | None = None, started: float | None = None) -> int:
    """``started``: the ``time.monotonic()`` the command started at (``python -m stabench``
    passes the time before its imports), from which ``--stop-after-minutes`` counts."""
    started = time.monotonic() if started is None else started
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv, args.started = argv, started
    lifeline.follow_workflow()
    try:
        return run_command(args)
    except BrokenPipeError:  # output piped into `head` and the like: not an error
        sys.stderr.close()
        return 0
    except USER_ERRORS as exc:
        print(f"stabench: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a folder that cannot be written, a full disk: the system's own words
        where = f": {exc.filename}" if exc.filename else ""
        print(f"stabench: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1
    except (MemoryError, torch.cuda.OutOfMemoryError, RuntimeError) as exc:
        if not isinstance(exc, (MemoryError, torch.cuda.OutOfMemoryError)) and "allocate" not in str(exc):
            raise  # a bug, not a size: keep its traceback
        print(f"stabench: error: out of memory ({str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__}); "
              "a smaller train.batch_size, seq_len or model size fits", file=sys.stderr)
        return 1
