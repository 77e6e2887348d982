"""Packaging: environment.yml mirrors pyproject.toml, and a built wheel works outside the
repository (its benchmarks, schema and methods travel as package data)."""

import os
import site
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent


def _pip_and_python(env_file: Path) -> tuple[set[str], str]:
    env = yaml.safe_load(env_file.read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    python = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python"))
    return set(pip), python.removeprefix("python")


def test_environment_yml_mirrors_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = set(project["dependencies"]) | {r for reqs in project["optional-dependencies"].values() for r in reqs}
    pip, python = _pip_and_python(REPO / "environment.yml")
    assert pip - {"-e ."} == wanted
    assert "-e ." in pip
    assert python == project["requires-python"]


def test_workflow_env_mirrors_pyproject():
    """The rules' software environment: stabench itself and its runtime dependencies."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pip, python = _pip_and_python(REPO / "workflow" / "envs" / "stabench.yaml")
    assert pip == set(project["dependencies"]) | {"-e ../.."}
    assert (REPO / "workflow" / "envs" / "../..").resolve() == REPO  # -e ../.. is this repository
    assert python == project["requires-python"]


@pytest.mark.slow
def test_wheel_works_from_an_empty_folder(tmp_path):
    """Build the wheel, install it (no dependencies: they come from this environment, through
    PYTHONPATH, which skips this environment's editable install), then from an empty folder
    list the shipped methods and train a few steps of the shipped smoke benchmark."""
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(wheels), str(REPO)], check=True)
    wheel, = wheels.glob("stabench-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--no-deps", str(wheel)], check=True)
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(site.getsitepackages())}
    env.pop("STABENCH_METHODS_PATH", None)
    stabench = str(venv / "bin" / "stabench")
    listed = subprocess.run([stabench, "methods"], cwd=empty, env=env, capture_output=True, text=True, check=True)
    shipped = {p.stem for p in (REPO / "methods").glob("*.py") if not p.stem.startswith("_")}
    assert {line.split()[0] for line in listed.stdout.splitlines()} == shipped
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import stabench; print(stabench.__file__)"],
                           cwd=empty, env=env, capture_output=True, text=True, check=True).stdout
    assert str(venv) in where  # the wheel's package, not this checkout's
    trained = subprocess.run([stabench, "train", "smoke", "--method", "qk_layernorm", "--size", "t16", "--lr", "0.01",
                              "--out", "run", "--set", "train.steps=4", "--set", "train.warmup_steps=1", "--set", "train.probe_every=2",
                              "--set", "train.eval_every=4", "--no-progress", "--threads", "1"],
                             cwd=empty, env=env, capture_output=True, text=True)
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert (empty / "run" / "metrics.json").is_file()
    assert (empty / "results" / "smoke" / "data" / "manifest.json").is_file()
