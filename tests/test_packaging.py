"""Packaging: environment.yml mirrors pyproject.toml, and a built wheel works outside the
repository (its benchmarks, schema, methods, claims and the workflow travel as package data)."""

import os
import site
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from test_workflow import snakemake_env

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


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """Build the wheel and install it, non-editable, into a fresh virtual environment (no
    dependencies: they come from this environment, through PYTHONPATH, which skips this
    environment's editable install). Returns the venv and the environment to run it in."""
    tmp = tmp_path_factory.mktemp("wheel")
    wheels = tmp / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(wheels), str(REPO)], check=True)
    wheel, = wheels.glob("stabench-*.whl")
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    # without PYTHONPATH: a checkout on it (stabench.egg-info) would count as installed already
    clean = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--no-deps", str(wheel)], check=True, env=clean)
    env = {**snakemake_env(), "PYTHONPATH": os.pathsep.join(site.getsitepackages())}
    env.pop("STABENCH_METHODS_PATH", None)
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import stabench, analysis; print(stabench.__file__, analysis.__file__)"],
                           cwd=tmp, env=env, capture_output=True, text=True, check=True).stdout.split()
    assert all(w.startswith(str(venv)) for w in where), where  # the wheel's packages, not this checkout's
    return venv, env


@pytest.mark.slow
def test_wheel_works_from_an_empty_folder(installed, tmp_path):
    """From an empty folder, the installed wheel lists the shipped methods and trains a few
    steps of the shipped smoke benchmark."""
    venv, env = installed
    empty = tmp_path / "empty"
    empty.mkdir()
    stabench = str(venv / "bin" / "stabench")
    listed = subprocess.run([stabench, "methods"], cwd=empty, env=env, capture_output=True, text=True, check=True)
    shipped = {p.stem for p in (REPO / "methods").glob("*.py") if not p.stem.startswith("_")}
    assert {line.split()[0] for line in listed.stdout.splitlines()} == shipped
    trained = subprocess.run([stabench, "train", "smoke", "--method", "qk_layernorm", "--size", "t16", "--lr", "0.01",
                              "--out", "run", "--set", "train.steps=4", "--set", "train.warmup_steps=1", "--set", "train.probe_every=2",
                              "--set", "train.eval_every=4", "--no-progress", "--threads", "1"],
                             cwd=empty, env=env, capture_output=True, text=True)
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert (empty / "run" / "metrics.json").is_file()
    assert (empty / "results" / "smoke" / "data" / "manifest.json").is_file()


@pytest.mark.slow
def test_stabench_run_from_an_empty_folder(installed, tmp_path):
    """`stabench run smoke --cores 2` from an empty folder runs the workflow shipped in the
    wheel (its Snakefile, rules, profile and claims) and writes the report there; asking for
    conda environments there is refused, since the environment file installs a clone."""
    venv, env = installed
    stabench = str(venv / "bin" / "stabench")
    shipped = venv.glob("lib/python*/site-packages/stabench/shipped")
    shipped, = [p for p in shipped]
    ran = subprocess.run([stabench, "run", "smoke", "--cores", "2"], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=900)
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    assert f"workflow specific profile {shipped / 'profiles' / 'default'}" in ran.stderr
    assert f"Snakefile: {shipped / 'Snakefile'}" in ran.stdout + ran.stderr
    assert (tmp_path / "results" / "smoke" / "report.html").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".snakemake", "results"]
    conda = subprocess.run([stabench, "run", "smoke", "-n", "--sdm", "conda"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=300)
    assert conda.returncode != 0
    assert "is an installed package, not a clone of the repository" in conda.stdout + conda.stderr


def test_claims_and_methods_come_from_the_working_folder_first(tmp_path, monkeypatch):
    """./claims, ./methods and ./benchmarks of the folder the workflow runs in come first, then
    the package's: a file of the same name shadows the shipped one, the others still count."""
    from analysis.claims import SHIPPED_CLAIMS, claims_dirs, load_claims
    from stabench.config import resolve_benchmark_path
    from stabench.methods import methods_dirs
    from stabench.methods import _find_file as find_method
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("STABENCH_METHODS_PATH", raising=False)
    shipped = {c["id"]: c for c in load_claims(SHIPPED_CLAIMS)}
    (tmp_path / "claims").mkdir()
    first = sorted(SHIPPED_CLAIMS.glob("0*.yaml"))[0]
    mine = yaml.safe_load(first.read_text())
    mine["claim"] = "said differently here"
    (tmp_path / "claims" / first.name).write_text(yaml.safe_dump(mine))
    (tmp_path / "claims" / "99_mine.yaml").write_text(yaml.safe_dump({**mine, "id": "mine"}))
    assert claims_dirs() == [tmp_path / "claims", SHIPPED_CLAIMS]
    claims = {c["id"]: c for c in load_claims(claims_dirs())}
    assert set(claims) == set(shipped) | {"mine"}
    assert claims[mine["id"]]["claim"] == "said differently here"
    (tmp_path / "methods").mkdir()
    (tmp_path / "methods" / "baseline.py").write_text((REPO / "methods" / "baseline.py").read_text())
    assert methods_dirs()[0] == tmp_path / "methods"
    assert find_method("baseline") == tmp_path / "methods" / "baseline.py"
    assert find_method("z_loss").parent.resolve() == (REPO / "methods").resolve()
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "benchmarks" / "smoke.yaml").write_text((REPO / "benchmarks" / "smoke.yaml").read_text())
    assert resolve_benchmark_path("smoke") == tmp_path / "benchmarks" / "smoke.yaml"


def test_stabench_run_calls_the_shipped_snakefile_on_this_folder(tmp_path, monkeypatch):
    """`stabench run BENCHMARK ARGS...`: Snakemake with the package's Snakefile, this folder as
    its directory, the benchmark as one more --config value, a shipped profile by name."""
    import stabench.cli as cli
    from stabench.config import SHIPPED_DIR
    calls = []
    monkeypatch.setattr(cli.subprocess, "run", lambda cmd: calls.append(cmd) or subprocess.CompletedProcess(cmd, 0))
    monkeypatch.chdir(tmp_path)
    assert cli.main(["run", "smoke", "--cores", "2", "--config", "gpus=1", "--profile", "gpu", "-n"]) == 0
    assert cli.main(["run", "-n"]) == 0
    head = [sys.executable, "-m", "snakemake", "--snakefile", str((REPO / "Snakefile").resolve()),
            "--directory", str(tmp_path)]
    assert calls[0] == [*head, "--cores", "2", "--config", "benchmark=smoke", "gpus=1",
                        "--profile", str(SHIPPED_DIR / "profiles" / "gpu"), "-n"]
    assert calls[1] == [*head, "-n"]
    assert cli.main(["run", "nosuchbenchmark"]) == 2 and len(calls) == 2


@pytest.mark.slow  # a Snakemake dry run: ~20 s
def test_conda_jobs_run_the_environments_python(tmp_path):
    """Under --sdm conda every job runs `python` (its conda environment's), not the path of the
    Python running Snakemake; and `stabench run` takes a method, benchmark and claim of the
    working folder. A dry run: a stand-in `conda` answers Snakemake's checks, nothing is built."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "conda").write_text("""#!/bin/sh
case "$*" in
  "info --json") echo '{"conda_prefix": "/nonexistent", "platform": "linux-64"}' ;;
  "--version") echo "conda 24.11.0" ;;
  "config --get channel_priority --json") echo '{"get": {"channel_priority": "strict"}}' ;;
  *) echo "not a real conda: $*" >&2; exit 1 ;;
esac
""")
    (bin_dir / "conda").chmod(0o755)
    work = tmp_path / "work"
    for folder in ("methods", "benchmarks", "claims"):
        (work / folder).mkdir(parents=True)
    (work / "methods" / "mine.py").write_text((REPO / "methods" / "_template.py").read_text())
    bench = yaml.safe_load((REPO / "benchmarks" / "smoke.yaml").read_text())
    (work / "benchmarks" / "mine.yaml").write_text(yaml.safe_dump({**bench, "name": "mine", "methods": ["baseline", "mine"]}))
    claim = yaml.safe_load(sorted((REPO / "claims").glob("0*.yaml"))[0].read_text())
    (work / "claims" / "99_mine.yaml").write_text(yaml.safe_dump({**claim, "id": "mine"}))
    env = {**snakemake_env(), "PATH": f"{bin_dir}{os.pathsep}{snakemake_env()['PATH']}"}
    env.pop("STABENCH_METHODS_PATH", None)
    proc = subprocess.run([sys.executable, "-m", "stabench", "run", "mine", "-n", "-p", "--sdm", "conda"], cwd=work,
                          env=env, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    commands = [line.removeprefix("Shell command: ") for line in out.splitlines() if line.startswith("Shell command: python")]
    assert any(c.startswith("python -m stabench train --spec results/mine/runs/mine/") for c in commands)
    assert any(c.startswith("python -m analysis report") for c in commands)
    assert sys.executable not in out.split("Building DAG of jobs")[-1]
    assert f"--claims-dir {work / 'claims'} {REPO / 'stabench' / 'shipped' / 'claims'}" in out
