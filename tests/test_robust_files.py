"""Nothing lost: one process per run, damage repaired, a killed workflow resumed by one plain
`snakemake` (issue 15, items 2, 4 and 6).

The workflow tests run the smoke benchmark once (about a minute on 2 cores) and damage
copies of its results; every Python process of those runs has the network forbidden too
(tests/offline_guard).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from stabench.checkpoint import CHECKPOINT_NAME, PREVIOUS_NAME
from stabench.runspec import resolve_run

REPO = Path(__file__).resolve().parent.parent
GUARD = Path(__file__).resolve().parent / "offline_guard"
SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile")]


def env(tmp: Path) -> dict:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    return {**base, "PYTHONPATH": os.pathsep.join([str(GUARD), str(REPO), base.get("PYTHONPATH", "")]),
            "STABENCH_NETLOG": str(tmp / "net.log")}


def snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """A plain `snakemake --cores 2` (the workflow profile adds rerun-incomplete)."""
    proc = subprocess.run([*SNAKEMAKE, "--directory", str(workdir), "--cores", "2", *args], env=env(workdir),
                          capture_output=True, text=True, timeout=900)
    if check:
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc


def checkpoint_step(path: Path) -> int | None:
    from stabench.checkpoint import damage
    state, _ = damage(path) if path.is_file() else (None, None)
    return None if state is None else state["step"]


def wait_for(predicate, timeout: float = 240, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


# ---- item 2: one process per run -------------------------------------------------------------

def train_command(engine_bench, out: Path, steps: int) -> list[str]:
    return [sys.executable, "-m", "stabench", "train", str(engine_bench.path), "--method", "baseline", "--size",
            "tiny", "--lr", "1e-2", "--out", str(out), "--data", str(engine_bench.data_dir), "--threads", "1",
            "--no-progress", "--set", f"train.steps={steps}", "--set", "train.checkpoint_every=20"]


def test_second_trainer_fails_while_the_first_runs_and_a_resumed_one_trains_after_kill9(engine_bench, tmp_path):
    out = tmp_path / "run"
    first = subprocess.Popen(train_command(engine_bench, out, 3000), env=env(tmp_path),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: (checkpoint_step(out / CHECKPOINT_NAME) or 0) >= 20 or first.poll() is not None,
                 what="the first checkpoint")
        assert first.poll() is None, first.communicate()
        second = subprocess.run(train_command(engine_bench, out, 3000), env=env(tmp_path), capture_output=True,
                                text=True, timeout=120)
        lines = second.stderr.strip().splitlines()
        assert second.returncode == 2 and len(lines) == 1, second.stderr
        assert f"{out} is being trained by another process (pid {first.pid})" in lines[0]
        assert first.poll() is None, "the refused trainer must not have disturbed the first"
    finally:
        first.kill()
        first.communicate()
    killed_at = checkpoint_step(out / CHECKPOINT_NAME)  # never missing, even mid-save
    assert killed_at and killed_at < 3000
    resumed = subprocess.run(train_command(engine_bench, out, 3000), env=env(tmp_path), capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 3000 and metrics["resumed_from_step"] >= killed_at


def test_a_folder_holding_another_runs_metrics_is_refused(engine_bench, tmp_path, run_training, capsys):
    from stabench.cli import main
    out = tmp_path / "run"
    run_training(out, lr=1e-2)
    (out / CHECKPOINT_NAME).unlink()  # only metrics.json says whose folder it is now
    before = (out / "metrics.json").read_text()
    code = main(["train", str(engine_bench.path), "--method", "baseline", "--size", "tiny", "--lr", "3e-3",
                 "--out", str(out), "--data", str(engine_bench.data_dir), "--no-progress"])
    assert code == 2 and "holds the run" in capsys.readouterr().err
    assert (out / "metrics.json").read_text() == before


# ---- item 4: damaged checkpoints, through the trainer ------------------------------------------

@contextlib.contextmanager
def crash_at(step: int):
    """The loop raises right after optimizer step ``step`` (its probes), as a kill would stop it."""
    import stabench.loop as loop
    real = loop.run_probes

    def probes(ctx, extra):
        if ctx.step == step:
            raise RuntimeError("crash for the test")
        return real(ctx, extra)

    loop.run_probes = probes
    try:
        with pytest.raises(RuntimeError, match="crash for the test"):
            yield
    finally:
        loop.run_probes = real


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def flip_bytes(path: Path) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 32] = bytes(b ^ 0xFF for b in data[middle:middle + 32])
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def uninterrupted(engine_bench, tmp_path_factory):
    from stabench.loop import train
    bench = engine_bench.load(["train.checkpoint_every=10"])
    run = resolve_run(bench, method="baseline", size="tiny", lr=1e-2, seed=0)
    out = tmp_path_factory.mktemp("uninterrupted")
    return bench, train([run], [out], engine_bench.data_dir, progress=False)[0]


@pytest.mark.parametrize("damage, resumes_from", [
    ({CHECKPOINT_NAME: truncate}, 10),
    ({CHECKPOINT_NAME: flip_bytes}, 10),   # torch.load alone would read these as weights
    ({CHECKPOINT_NAME: lambda p: p.write_bytes(b"")}, 10),
    ({CHECKPOINT_NAME: truncate, PREVIOUS_NAME: flip_bytes}, None),
])
def test_damaged_checkpoint_is_reported_and_the_run_restarts_from_the_previous_or_scratch(
        engine_bench, uninterrupted, tmp_path, capfd, damage, resumes_from):
    from stabench.loop import train
    bench, reference = uninterrupted
    run = resolve_run(bench, method="baseline", size="tiny", lr=1e-2, seed=0)
    out = tmp_path / "run"
    with crash_at(30):
        train([run], [out], engine_bench.data_dir, progress=False)
    assert checkpoint_step(out / CHECKPOINT_NAME) == 20 and checkpoint_step(out / PREVIOUS_NAME) == 10
    capfd.readouterr()
    for name, spoil in damage.items():
        spoil(out / name)
    metrics = train([run], [out], engine_bench.data_dir, progress=False)[0]
    lines = [line for line in capfd.readouterr().err.splitlines() if "damaged" in line]
    assert len(lines) == 1, lines
    assert f"{out / CHECKPOINT_NAME} is damaged" in lines[0]
    assert ("training from scratch" in lines[0]) if resumes_from is None else (f"step {resumes_from}" in lines[0])
    assert metrics["resumed_from_step"] == (resumes_from or None)
    assert metrics["final_val_loss"] == reference["final_val_loss"]
    assert checkpoint_step(out / CHECKPOINT_NAME) == 40


# ---- item 4: damaged results, through the workflow ---------------------------------------------

@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("smoke")
    snakemake(workdir, "--config", "benchmark=smoke")
    return workdir


@pytest.mark.slow
def test_one_plain_snakemake_repairs_damaged_and_missing_results(smoke, tmp_path):
    work = tmp_path / "work"
    shutil.copytree(smoke, work, symlinks=True)
    results = work / "results" / "smoke"
    runs = results / "runs"
    before = pd.read_csv(results / "runs.csv")
    board_time = (results / "leaderboard.csv").stat().st_mtime
    (runs / "baseline/t16/lr0.001-s0/metrics.json").write_text('{"method": "baseline", "final_val')  # torn
    truncate(runs / "baseline/t32/lr0.01-s0" / CHECKPOINT_NAME)        # a finished run's checkpoint
    (runs / "qk_layernorm+z_loss/t16/lr0.1-s0/history.csv").unlink()
    (runs / "qk_layernorm+z_loss/t32/lr0.001-s0/losses.csv").write_text("garbage\n")
    (results / "eval/qk_layernorm+z_loss/t32.json").write_text("{not json")
    (results / "runs.csv").unlink()                                    # as a failed aggregation leaves it
    proc = snakemake(work, "--config", "benchmark=smoke")
    said = proc.stderr
    for name in ("baseline/t16/lr0.001-s0/metrics.json", "baseline/t32/lr0.01-s0/metrics.json",
                 "qk_layernorm+z_loss/t16/lr0.1-s0/metrics.json", "qk_layernorm+z_loss/t32/lr0.001-s0/losses.csv",
                 "eval/qk_layernorm+z_loss/t32.json"):
        assert f"stabench: removed results/smoke/{'' if name.startswith('eval') else 'runs/'}{name}" in said, said
    assert "analysis outputs" in said and "Traceback" not in said
    for run in ("qk_layernorm+z_loss/t16/lr0.1-s0", "qk_layernorm+z_loss/t32/lr0.001-s0", "baseline/t16/lr0.001-s0"):
        for name in ("metrics.json", "history.csv", "losses.csv"):
            assert (runs / run / name).read_text() == (smoke / "results/smoke/runs" / run / name).read_text()
    after = pd.read_csv(results / "runs.csv")
    pd.testing.assert_series_equal(after["final_val_loss"], before["final_val_loss"])
    assert (results / "leaderboard.csv").stat().st_mtime > board_time
    assert (results / "report.html").stat().st_mtime > (results / "runs.csv").stat().st_mtime - 1
    assert json.loads((results / "eval/qk_layernorm+z_loss/t32.json").read_text())["status"]
    again = snakemake(work, "--config", "benchmark=smoke")
    assert "Nothing to be done" in again.stdout + again.stderr
    assert not (work / "net.log").exists()


def test_aggregation_names_a_damaged_metrics_file(tmp_path):
    from analysis.runs import collect_runs
    bad = tmp_path / "metrics.json"
    bad.write_text("{truncated")
    with pytest.raises(ValueError, match=str(bad)):
        collect_runs([bad])


@pytest.mark.slow
def test_evaluating_a_run_with_damaged_files_is_one_line(smoke, tmp_path, capsys, monkeypatch):
    from stabench.cli import main
    monkeypatch.setattr("stabench.offline.go_offline", lambda: None)
    run = tmp_path / "run"
    shutil.copytree(smoke / "results/smoke/runs/baseline/t16/lr0.01-s0", run)
    truncate(run / CHECKPOINT_NAME)
    argv = ["eval", "smoke", "--runs", str(run), "--out", str(tmp_path / "e.json"), "--data",
            str(smoke / "results/smoke/data"), "--tasks-dir", str(smoke / "results/smoke/eval_tasks"), "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{run / CHECKPOINT_NAME} is damaged" in err[0]
    (run / "metrics.json").write_text("[1, 2")
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{run / 'metrics.json'} is damaged" in err[0]


def test_repair_in_a_dry_run_removes_nothing(tmp_path):
    from stabench.repair import repair
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text("{")
    derived = tmp_path / "runs.csv"
    derived.write_text("x\n")
    lines = repair({str(run): None}, [], [str(derived)], dryrun=True)
    assert any("would remove" in line and "metrics.json" in line for line in lines)
    assert (run / "metrics.json").exists() and derived.exists()
    lines = repair({str(run): None}, [], [str(derived)])
    assert not (run / "metrics.json").exists() and not derived.exists()


def test_one_lost_analysis_output_rebuilds_them_all(tmp_path):
    """Snakemake rebuilds no missing intermediate whose consumers' outputs exist ("Nothing to
    be done" with runs.csv gone and the report stale): the rest are removed so all rebuild."""
    from stabench.repair import repair
    derived = [tmp_path / name for name in ("runs.csv", "leaderboard.csv", "report.html")]
    for path in derived[1:]:
        path.write_text("x\n")
    lines = repair({}, [], [str(p) for p in derived])
    assert "removed 2 analysis outputs" in lines[0] and not any(p.exists() for p in derived)
    assert repair({}, [], [str(p) for p in derived]) == []  # nothing there: a fresh start


@pytest.mark.slow
def test_repair_finds_foreign_metrics_and_damaged_data(smoke, tmp_path):
    from stabench.data import DataError, load_data
    from stabench.repair import repair
    runs = smoke / "results/smoke/runs"
    mine, other = tmp_path / "mine", tmp_path / "other"
    shutil.copytree(runs / "baseline/t16/lr0.01-s0", mine)
    shutil.copy(runs / "baseline/t16/lr0.1-s0/metrics.json", mine / "metrics.json")  # another run's result
    data = tmp_path / "data"
    shutil.copytree(smoke / "results/smoke/data", data)
    truncate(data / "train.npy")
    with pytest.raises(DataError, match="is damaged"):
        load_data(data)
    slot = {"benchmark": "smoke", "method": "baseline", "size": "t16", "lr": 0.01, "seed": 0}
    lines = repair({str(mine): slot, str(other): slot}, [], [], [], str(data))
    assert any(f"removed {mine / 'metrics.json'}: it holds the run" in line for line in lines), lines
    assert any(f"removed {data / 'manifest.json'}: the data folder is damaged" in line for line in lines), lines
    assert not (mine / "metrics.json").exists() and not (data / "manifest.json").exists()


@pytest.mark.slow
def test_one_plain_snakemake_prepares_flipped_data_again_and_rebuilds_a_truncated_runs_csv(smoke, tmp_path):
    """Issue 21: a byte-flipped train.npy is prepared again in place (no run retrained), and a
    runs.csv truncated to valid text is rebuilt with everything downstream of it."""
    work = tmp_path / "work"
    shutil.copytree(smoke, work, symlinks=True)
    results = work / "results" / "smoke"
    train_npy, runs_csv = results / "data" / "train.npy", results / "runs.csv"
    original, rows = train_npy.read_bytes(), len(pd.read_csv(runs_csv))
    flipped = bytearray(original)
    flipped[len(flipped) // 2] ^= 0xFF
    train_npy.write_bytes(bytes(flipped))
    runs_csv.write_text("".join(runs_csv.read_text().splitlines(keepends=True)[:2]))  # header + one row
    metrics = sorted((results / "runs").rglob("metrics.json"))
    stamps = [p.stat().st_mtime_ns for p in metrics]
    proc = snakemake(work, "--config", "benchmark=smoke")
    said = proc.stderr
    assert ("stabench: prepared results/smoke/data again: train.npy differs from the checksum in the manifest "
            "(same size, other bytes)") in said, said
    assert f"(runs.csv: it holds 1 rows, {rows} were written)" in said, said
    assert train_npy.read_bytes() == original
    assert [p.stat().st_mtime_ns for p in metrics] == stamps  # no run trained again
    assert len(pd.read_csv(runs_csv)) == rows and (results / "report.html").is_file()
    again = snakemake(work, "--config", "benchmark=smoke")
    assert "Nothing to be done" in again.stdout + again.stderr


# ---- item 6: a killed workflow resumes with one plain command ---------------------------------

def processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text.encode() in (entry / "cmdline").read_bytes() and b"stabench" in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="pidfds and /proc are Linux")
def test_kill9_of_snakemake_kills_its_trainer_and_a_plain_rerun_resumes(tmp_path):
    bench = yaml.safe_load((REPO / "benchmarks" / "smoke.yaml").read_text())
    bench.update(name="killed", methods=["baseline"], learning_rates=[1e-2], sizes={"t16": bench["sizes"]["t16"]},
                 eval={"runs": "none"})
    bench["train"].update(steps=1000, checkpoint_every=50)
    path = tmp_path / "killed.yaml"
    path.write_text(yaml.safe_dump(bench))
    workflow = subprocess.Popen([*SNAKEMAKE, "--directory", str(tmp_path), "--cores", "2", "--config",
                                 f"benchmark={path}"], env=env(tmp_path), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
    run = tmp_path / "results/killed/runs/baseline/t16/lr0.01-s0"
    try:
        wait_for(lambda: checkpoint_step(run / CHECKPOINT_NAME) or workflow.poll() is not None,
                 what="the first checkpoint")
        trainers = processes_mentioning("results/killed/runs/")  # its --spec paths
        assert trainers, "no trainer found"
        os.kill(workflow.pid, signal.SIGKILL)
        workflow.wait()
        wait_for(lambda: not processes_mentioning("results/killed/runs/"), timeout=10, what="the trainer to die")
    finally:
        for pid in processes_mentioning("results/killed/runs/"):
            os.kill(pid, signal.SIGKILL)
    assert any((tmp_path / ".snakemake/locks").glob("*.lock")), "expected the stale lock of a killed snakemake"
    killed_at = checkpoint_step(run / CHECKPOINT_NAME)
    proc = snakemake(tmp_path, "--config", f"benchmark={path}")
    assert "removed the lock a killed snakemake left" in proc.stderr
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 1000 and metrics["resumed_from_step"] >= killed_at
    assert (tmp_path / "results/killed/report.html").is_file()


def test_stale_lock_is_kept_while_another_snakemake_runs_here(tmp_path, monkeypatch):
    from stabench.repair import OWNER_NAME, stale_lock
    monkeypatch.chdir(tmp_path)
    locks = tmp_path / ".snakemake/locks"
    locks.mkdir(parents=True)
    (locks / "0.output.lock").write_text("results/x\n")
    other = subprocess.Popen(["bash", "-c", "exec -a snakemake sleep 60"], cwd=tmp_path)
    try:
        wait_for(lambda: Path(f"/proc/{other.pid}/cmdline").read_bytes().startswith(b"snakemake"), 10)
        lines = stale_lock(".snakemake")
        assert len(lines) == 1 and f"another snakemake (pid {other.pid})" in lines[0]
        assert (locks / "0.output.lock").exists()
    finally:
        other.kill()
        other.wait()
    (tmp_path / ".snakemake" / OWNER_NAME).write_text(json.dumps({"host": "elsewhere", "pid": 7}))
    lines = stale_lock(".snakemake")
    assert "on elsewhere" in lines[0] and "snakemake --unlock" in lines[0]
    assert (locks / "0.output.lock").exists()
    (tmp_path / ".snakemake" / OWNER_NAME).unlink()
    assert "removed the lock" in stale_lock(".snakemake")[0]
    assert not (locks / "0.output.lock").exists()
