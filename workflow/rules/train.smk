if not PACK:

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
            runtime=train_runtime,  # minutes and MB from the size and steps (resources.smk)
            mem_mb=train_mem,
            cpus_per_task=train_cpus,
        log:
            f"{RESULTS}/logs/train/{{method}}/{{size}}/lr{{lr}}-s{{seed}}.log",
        shell:
            "{PYTHON} -m stabench train {BENCHMARK_FILE} --method '{wildcards.method}' --size {wildcards.size}"
            " --lr {wildcards.lr} --seed {wildcards.seed} --out {params.out} --data {RESULTS}/data"
            " --threads {threads} {params.gpu} > {log} 2>&1"


if PACK:

    rule train_pack:
        """All runs of one (method, size) in one process, as a batched ensemble over LRs and
        seeds (stabench/packed.py); methods that cannot be packed train one by one inside it."""
        input:
            manifest=rules.prepare_data.output.manifest,
        output:
            metrics=[f"{RESULTS}/runs/{{method}}/{{size}}/lr{lr}-s{seed}/metrics.json" for lr in LRS for seed in SEEDS],
            history=[f"{RESULTS}/runs/{{method}}/{{size}}/lr{lr}-s{seed}/history.csv" for lr in LRS for seed in SEEDS],
        params:
            run=lambda wc: [run_params(wc, lr=lr, seed=seed) for lr in LRS for seed in SEEDS],
            members=lambda wc: " ".join(f"--run {lr}:{seed}:{run_dir(wc.method, wc.size, lr, seed)}"
                                        for lr in LRS for seed in SEEDS),
            gpu=gpu_args,
        threads: TRAIN_THREADS
        resources:
            gpu=lambda wc: min(size_gpus(wc.size), 1),
            gpu_slots=lambda wc: min(gpu_slots(wc.size), 1),
            runtime=pack_runtime,
            mem_mb=pack_mem,
        log:
            f"{RESULTS}/logs/train/{{method}}/{{size}}/pack.log",
        shell:
            "{PYTHON} -m stabench train-pack {BENCHMARK_FILE} --method '{wildcards.method}' --size {wildcards.size}"
            " {params.members} --data {RESULTS}/data --threads {threads} {params.gpu} > {log} 2>&1"
