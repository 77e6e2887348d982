"""A run longer than its job: ``stabench train --stop-after-minutes M`` saves every run's
checkpoint at the step it has reached once M minutes have passed since the command started,
prints one line and exits ``CONTINUE_EXIT``; the same command again continues, and the runs
end exactly where uninterrupted ones end (on CPU, bit for bit). The workflow's side (requests
capped at ``--config max_job_minutes``, the retries that chain the jobs) is tested in
tests/test_slurm.py, through a real SLURM too."""

from __future__ import annotations

import json
import time

import torch

import stabench.cli as cli
from stabench.checkpoint import read_checkpoint
from stabench.loop import CONTINUE_EXIT, train
from stabench.runspec import write_spec

from conftest import resolve

STEPS = 60
OVERRIDES = [f"train.steps={STEPS}", "train.checkpoint_every=25", "train.probe_every=10", "train.eval_every=30"]
MEMBERS = [(1e-2, 0), (1e-3, 1)]


def specs(engine_bench, root):
    bench = engine_bench.load(OVERRIDES)
    runs = [resolve(bench, lr=lr, seed=seed) for lr, seed in MEMBERS]
    return runs, [write_spec(root / f"m{k}", run, owner="workflow") for k, run in enumerate(runs)]


def train_cli(engine_bench, paths, capsys, *extra, started=None):
    argv = ["train", *[a for p in paths for a in ("--spec", str(p))], "--data", str(engine_bench.data_dir),
            "--threads", "1", "--no-progress", *extra]
    code = cli.main(argv, started=started)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_a_run_stopped_at_the_deadline_continues_in_the_next_job_exactly(engine_bench, tmp_path, capsys,
                                                                         torch_one_thread):
    runs, paths = specs(engine_bench, tmp_path / "cut")
    # a job whose time is already up: one step, then every run's checkpoint, one line, exit 75
    code, out, err = train_cli(engine_bench, paths, capsys, "--stop-after-minutes", "0.05",
                               started=time.monotonic() - 4)
    assert code == CONTINUE_EXIT, err
    lines = [line for line in out.splitlines() if "time limit" in line]
    assert lines == [f"stabench: stopped at the job's time limit at step 1 of {STEPS} (2 of 2 runs unfinished, "
                     "checkpoints saved); the run continues from there in the next job"], out
    for path in paths:
        state = read_checkpoint(path.parent)
        assert state["step"] == 1 and not state["finished"]
        assert not (path.parent / "metrics.json").exists()
    # the next job, also cut: 0.05 minutes from now (a few hundred ms of this tiny run, or all of it)
    code, out, err = train_cli(engine_bench, paths, capsys, "--stop-after-minutes", "0.05",
                               started=time.monotonic() - 2.7)
    assert code in (0, CONTINUE_EXIT), err
    cut_at = read_checkpoint(paths[0].parent)["step"]
    # the last job finishes the runs
    code, out, err = train_cli(engine_bench, paths, capsys, "--stop-after-minutes", "10")
    assert code == 0, err
    assert "finished" in out and "time limit" not in out

    torch.set_num_threads(1)
    reference = train(runs, [tmp_path / "ref" / f"m{k}" for k in range(len(runs))], engine_bench.data_dir,
                      progress=False)
    for k, (path, ref) in enumerate(zip(paths, reference)):
        metrics = json.loads((path.parent / "metrics.json").read_text())
        assert metrics["resumed_from_step"] is not None and metrics["steps"] == STEPS
        assert metrics["final_val_loss"] == ref["final_val_loss"], (k, cut_at)
        ref_dir = tmp_path / "ref" / f"m{k}"
        assert (path.parent / "losses.csv").read_text() == (ref_dir / "losses.csv").read_text()


def test_without_a_deadline_nothing_stops(engine_bench, tmp_path, capsys, torch_one_thread):
    _, paths = specs(engine_bench, tmp_path)
    code, out, err = train_cli(engine_bench, paths[:1], capsys)
    assert code == 0 and "time limit" not in out, err


def test_stop_after_minutes_must_be_positive(engine_bench, tmp_path, capsys):
    _, paths = specs(engine_bench, tmp_path)
    try:
        cli.main(["train", "--spec", str(paths[0]), "--stop-after-minutes", "0"])
    except SystemExit as exc:
        assert exc.code == 2
    assert "minutes > 0" in capsys.readouterr().err
