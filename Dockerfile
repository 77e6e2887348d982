# stabench in a container, from the same pins as pyproject.toml: Python 3.12, torch 2.13.0
# (inside pyproject's torch>=2.4,<2.15), then `pip install .` (stabench, its dependencies,
# Snakemake; the benchmarks and methods travel as package data). docs/cluster.md says how to
# build it, run the workflow in it and convert it for Apptainer.
#
#   docker build -t stabench:0.1.0 .                                   # CUDA torch (PyPI's Linux wheel)
#   docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cpu -t stabench:0.1.0-cpu .
FROM python:3.12-slim

# PyPI's Linux torch wheel brings CUDA; TORCH_INDEX names another wheel index (the CPU-only one).
ARG TORCH_INDEX=""
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1

WORKDIR /opt/stabench
# torch first, alone: the largest layer, cached while the code changes
RUN pip install ${TORCH_INDEX:+--index-url "$TORCH_INDEX"} torch==2.13.0
COPY . .
RUN pip install . && stabench methods >/dev/null

# Run from a mounted working folder: results/ is written there.
WORKDIR /work
CMD ["stabench", "--help"]
