"""Zero-shot evaluation through lm-eval (stabench/evaluation/), as set by the benchmark's eval:.

    build_eval_tasks   held-out documents -> offline task jsonl + YAML     (once per benchmark)
    evaluate           eval.runs: best -> the best-LR run of a (method, size) -> eval/<method>/<size>.json
    eval_run           eval.runs: all  -> every run -> runs/<...>/eval.json
EVALS lists the records aggregate joins into runs.csv (empty for eval.runs: none); a (method, size)
taken from reference results (common.smk) has its scores in its reference rows, and no record.
"""

from stabench.evaluation.tasks import BUILDER_VERSION

EVAL = BENCHMARK["eval"]
EVAL_PARAMS = json.dumps(EVAL, sort_keys=True)  # a change re-evaluates, it never retrains
EVAL_TASKS_DIR = str(paths.tasks_dir(RESULTS))

if EVAL["runs"] == "best":
    EVALS = [f"{RESULTS}/eval/{m}/{s}.json" for m in METHODS for s in SIZES if (m, s) not in FROM_REFERENCE]
elif EVAL["runs"] == "all":
    EVALS = [f"{run_dir(*run)}/eval.json" for run in TRAINED]
else:
    EVALS = []


rule build_eval_tasks:
    """Held-out documents -> stabench_cloze / stabench_continuation jsonl + lm-eval YAML."""
    input:
        manifest=rules.prepare_data.output.manifest,
    output:
        manifest=f"{EVAL_TASKS_DIR}/manifest.json",
    params:
        python=PYTHON,
        benchmark=BENCHMARK_ARG,
        settings=json.dumps({"n_examples": EVAL["n_examples"], "seed": EVAL["seed"], "builder": BUILDER_VERSION}),
        data=lambda wc, input: str(Path(input.manifest).parent),
        out=lambda wc, output: str(Path(output.manifest).parent),
    conda:
        ENV
    log:
        f"{RESULTS}/logs/build_eval_tasks.log",
    shell:
        "{params.python} -m stabench build-tasks {params.benchmark} --data {params.data} --out {params.out}"
        " --no-progress > {log} 2>&1"


rule evaluate:
    """The runs of one (method, size) -> evaluate only the best-LR one (a diverged grid: none)."""
    input:
        tasks=rules.build_eval_tasks.output.manifest,
        data=rules.prepare_data.output.manifest,
        metrics=lambda wc: [f"{d}/metrics.json" for d in runs_of(wc.method, wc.size)],
    output:
        f"{RESULTS}/eval/{{method}}/{{size}}.json",
    params:
        python=PYTHON,
        benchmark=BENCHMARK_ARG,
        settings=EVAL_PARAMS,
        runs=lambda wc: " ".join(runs_of(wc.method, wc.size)),
        data=lambda wc, input: str(Path(input.data).parent),
        tasks_dir=lambda wc, input: str(Path(input.tasks).parent),
        gpu=EVAL_GPU_ARGS,
    threads: TRAIN_THREADS
    resources:
        gpu=EVAL_GPUS,  # GPU workflows evaluate on a GPU (resources.smk)
        gpu_slots=EVAL_GPUS,
        runtime=eval_runtime,
        mem_mb=eval_mem,
    conda:
        ENV
    benchmark:
        f"{RESULTS}/benchmarks/eval/{{method}}/{{size}}.tsv"
    log:
        f"{RESULTS}/logs/eval/{{method}}/{{size}}.log",
    shell:
        "{params.python} -m stabench eval {params.benchmark} --best --runs {params.runs} --data {params.data}"
        " --tasks-dir {params.tasks_dir} --out {output} --threads {threads} {params.gpu} --no-progress > {log} 2>&1"


rule eval_run:
    """One finished run -> its eval.json (a diverged run: status diverged, not evaluated)."""
    input:
        tasks=rules.build_eval_tasks.output.manifest,
        data=rules.prepare_data.output.manifest,
        metrics=f"{RUN_DIR}/metrics.json",
    output:
        f"{RUN_DIR}/eval.json",
    params:
        python=PYTHON,
        benchmark=BENCHMARK_ARG,
        settings=EVAL_PARAMS,
        run=lambda wc, input: str(Path(input.metrics).parent),
        data=lambda wc, input: str(Path(input.data).parent),
        tasks_dir=lambda wc, input: str(Path(input.tasks).parent),
        gpu=EVAL_GPU_ARGS,
    threads: TRAIN_THREADS
    resources:
        gpu=EVAL_GPUS,  # GPU workflows evaluate on a GPU (resources.smk)
        gpu_slots=EVAL_GPUS,
        runtime=eval_runtime,
        mem_mb=eval_mem,
    conda:
        ENV
    benchmark:
        f"{RESULTS}/benchmarks/eval/{RUN_NAME}.tsv"
    log:
        f"{RESULTS}/logs/eval/{RUN_NAME}.log",
    shell:
        "{params.python} -m stabench eval {params.benchmark} --runs {params.run} --data {params.data}"
        " --tasks-dir {params.tasks_dir} --out {output} --threads {threads} {params.gpu} --no-progress > {log} 2>&1"
