"""Training: one job per seed's LR sweep of a (method, size), trained as one ensemble, for the
sizes where packing pays (PACKED_SIZES, see common.smk), and one job per run for the others
(SINGLE_SIZES; all of them with --config pack=0). Both call the same loop (stabench/loop.py).
Each job's wall time and peak memory go to results/<benchmark>/benchmarks/ (the report shows
them per method)."""

import re

from stabench.paths import SPEC_NAME


rule run_spec:
    """A run's spec (stabench.runspec), resolved once when the workflow loads, written as its
    folder's run.json: the train job builds the run from that file alone. Its params are the
    run's identity, so a benchmark change rewrites exactly the specs of the runs it changes,
    and so retrains exactly those runs."""
    output:
        spec=f"{RUN_DIR}/{SPEC_NAME}",
    params:
        identity=lambda wc: spec_of(wc.method, wc.size, wc.lr, wc.seed).identity,
    log:
        f"{RESULTS}/logs/run_spec/{RUN_NAME}.log",
    run:
        write_run_spec(wildcards, output.spec, log[0])


if SINGLE_SIZES:

    rule train:
        """One run of the grid. A diverged run exits 0 with diverged: true in its metrics; a
        crash fails only this job, and its log is kept."""
        wildcard_constraints:
            size="|".join(map(re.escape, SINGLE_SIZES)),
        input:
            spec=rules.run_spec.output.spec,
            manifest=rules.prepare_data.output.manifest,
        output:
            metrics=f"{RUN_DIR}/metrics.json",
            history=f"{RUN_DIR}/history.csv",
            losses=f"{RUN_DIR}/losses.csv",
        params:
            python=PYTHON,
            data=lambda wc, input: str(Path(input.manifest).parent),
            gpu=gpu_args,
            stop=stop_after,  # the job limit: a longer run saves and continues in the next job
        threads: TRAIN_THREADS
        retries: chain_retries(SINGLE_SIZES, 1)
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
            "{params.python} -m stabench train --spec {input.spec} --data {params.data}"
            " --threads {threads} {params.gpu} --stop-after-minutes {params.stop} > {log} 2>&1"


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
            specs=run_files("{method}", "{size}", PACK_SEED, SPEC_NAME),
            manifest=rules.prepare_data.output.manifest,
        output:
            metrics=run_files("{method}", "{size}", PACK_SEED, "metrics.json"),
            history=run_files("{method}", "{size}", PACK_SEED, "history.csv"),
            losses=run_files("{method}", "{size}", PACK_SEED, "losses.csv"),
        params:
            python=PYTHON,
            specs=lambda wc, input: " ".join(f"--spec {path}" for path in input.specs),
            data=lambda wc, input: str(Path(input.manifest).parent),
            gpu=gpu_args,
            stop=stop_after,
        threads: TRAIN_THREADS
        retries: chain_retries(PACKED_SIZES, PACK_MEMBERS)
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
            "{params.python} -m stabench train {params.specs} --data {params.data} --threads {threads} {params.gpu}"
            " --stop-after-minutes {params.stop} > {log} 2>&1"
