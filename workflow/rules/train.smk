rule train:
    """One run of the grid. A diverged run exits 0 with diverged: true in its metrics; a
    crash fails only this job, and its log is kept."""
    input:
        manifest=rules.prepare_data.output.manifest,
    output:
        metrics=f"{RESULTS}/runs/{{method}}/{{size}}/lr{{lr}}-s{{seed}}/metrics.json",
        history=f"{RESULTS}/runs/{{method}}/{{size}}/lr{{lr}}-s{{seed}}/history.csv",
    params:
        run=run_params,
        out=lambda wc, output: str(Path(output.metrics).parent),
        gpu=gpu_args,
    threads: TRAIN_THREADS
    resources:
        gpu=lambda wc: size_gpus(wc.size),  # SLURM executor: GPUs requested per job
        gpu_slots=lambda wc: gpu_slots(wc.size),  # local: bound with --resources gpu_slots=N*K
    log:
        f"{RESULTS}/logs/train/{{method}}/{{size}}/lr{{lr}}-s{{seed}}.log",
    shell:
        "{PYTHON} -m stabench train {BENCHMARK_FILE} --method '{wildcards.method}' --size {wildcards.size}"
        " --lr {wildcards.lr} --seed {wildcards.seed} --out {params.out} --data {RESULTS}/data"
        " --threads {threads} {params.gpu} > {log} 2>&1"
