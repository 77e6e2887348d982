"""Experiment trackers through Accelerate: `train.trackers: [tensorboard]` logs every probe row
of every run of an ensemble, read back from the TensorBoard event file."""

import csv

import pytest

pytest.importorskip("tensorboard")


def test_tensorboard_receives_every_probe_row(engine_bench, train_pack, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    bench = engine_bench.load(["train.steps=20", "train.trackers=[tensorboard]"])
    runs = [tmp_path / "runs" / "a", tmp_path / "runs" / "b"]
    train_pack(runs, [1e-3, 1e-2], benchmark=bench)
    events = sorted((tmp_path / "runs" / "tracking").glob("events.out.tfevents.*"))
    assert events, "no TensorBoard event file written"
    scalars = EventAccumulator(str(events[0]))
    scalars.Reload()
    for run in runs:
        with open(run / "history.csv", newline="") as f:
            history = [r for r in csv.DictReader(f) if r["loss"]]
        logged = scalars.Scalars(f"{run.name}/loss")
        assert [e.step for e in logged] == [int(r["step"]) for r in history]
        assert [e.value for e in logged] == pytest.approx([float(r["loss"]) for r in history], rel=1e-6)
        assert f"{run.name}/grad_norm" in scalars.Tags()["scalars"]


def test_trackers_do_not_change_a_runs_identity(engine_bench):
    from stabench.runspec import resolve_run
    plain = resolve_run(engine_bench.benchmark, method="baseline", size="tiny", lr=1e-2, seed=0)
    tracked = resolve_run(engine_bench.load(["train.trackers=[tensorboard]"]), method="baseline", size="tiny",
                          lr=1e-2, seed=0)
    assert plain.identity == tracked.identity
