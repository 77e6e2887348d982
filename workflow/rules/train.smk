"""Training: one job per seed's LR sweep of a (method, size), trained as one ensemble, for the
sizes where packing pays (PACKED_SIZES, see common.smk), and one job per run for the others
(SINGLE_SIZES; all of them with --config pack=0). Both call the same loop (stabench/loop.py).
Each job's wall time and peak memory go to results/<benchmark>/benchmarks/ (the report shows
them per method)."""

import re

if SINGLE_SIZES:

    rule train:
        """One run of the grid. A diverged run exits 0 with diverged: true in its metrics; a
        crash fails only this job, and its log is kept."""
        wildcard_constraints:
            size="|".join(map(re.escape, SINGLE_SIZES)),
        input:
            manifest=rules.prepare_data.output.manifest,
        output:
            metrics=f"{RUN_DIR}/metrics.json",
            history=f"{RUN_DIR}/history.csv",
            losses=f"{RUN_DIR}/losses.csv",
        params:
            python=PYTHON,
            benchmark=BENCHMARK_ARG,
            identity=lambda wc: run_identity(wc.method, wc.size, wc.lr, wc.seed),
            out=lambda wc, output: str(Path(output.metrics).parent),
            data=lambda wc, input: str(Path(input.manifest).parent),
            gpu=gpu_args,
        threads: TRAIN_THREADS
        resources:
            gpu=lambda wc: size_gpus(wc.size),  # SLURM executor: GPUs requested per job
            gpu_slots=lambda wc: gpu_slots(wc.size),  # local: bound with --resources gpu_slots=N*K
            runtime=train_runtime,  # minutes and MB from the size and steps (resources.smk)
            mem_mb=train_mem,
            cpus_per_task=train_cpus,
        conda:
            ENV
        benchmark:
            f"{RESULTS}/benchmarks/train/{RUN_NAME}.tsv"
        log:
            f"{RESULTS}/logs/train/{RUN_NAME}.log",
        shell:
            "{params.python} -m stabench train {params.benchmark} --method '{wildcards.method}' --size {wildcards.size}"
            " --lr {wildcards.lr} --seed {wildcards.seed} --out {params.out} --data {params.data}"
            " --threads {threads} {params.gpu} > {log} 2>&1"


if PACKED_SIZES:
    for _label, _stack in STACKS.items():
        if _stack.unpackable_reason():
            logger.info(f"stabench: {_label} trains its runs one at a time ({_stack.unpackable_reason()})")

    rule train_pack:
        """Runs of one (method, size) in one process, as one ensemble (stabench/loop.py): one
        seed's LR sweep per job, or every run of the (method, size) with pack=all. A method
        that declares itself unpackable trains them one at a time."""
        wildcard_constraints:
            size="|".join(map(re.escape, PACKED_SIZES)),
        input:
            manifest=rules.prepare_data.output.manifest,
        output:
            metrics=run_files("{method}", "{size}", PACK_SEED, "metrics.json"),
            history=run_files("{method}", "{size}", PACK_SEED, "history.csv"),
            losses=run_files("{method}", "{size}", PACK_SEED, "losses.csv"),
        params:
            python=PYTHON,
            benchmark=BENCHMARK_ARG,
            identities=lambda wc: [run_identity(wc.method, wc.size, lr, seed) for lr, seed in pack_runs(wc)],
            members=pack_members,
            data=lambda wc, input: str(Path(input.manifest).parent),
            gpu=gpu_args,
        threads: TRAIN_THREADS
        resources:
            gpu=lambda wc: size_gpus(wc.size),
            gpu_slots=lambda wc: gpu_slots(wc.size),
            runtime=pack_runtime,
            mem_mb=pack_mem,
            cpus_per_task=train_cpus,
        conda:
            ENV
        benchmark:
            f"{RESULTS}/benchmarks/train/{{method}}/{{size}}/{PACK_JOB}.tsv"
        log:
            f"{RESULTS}/logs/train/{{method}}/{{size}}/{PACK_JOB}.log",
        shell:
            "{params.python} -m stabench train-pack {params.benchmark} --method '{wildcards.method}' --size {wildcards.size}"
            " {params.members} --data {params.data} --threads {threads} {params.gpu} > {log} 2>&1"
