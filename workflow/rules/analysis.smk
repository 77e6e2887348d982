FIGURES = ["loss_vs_lr", "sensitivity_vs_size", "attn_logit_vs_lr", "loss_curves", "log_z",
           "output_logit_divergence", "instability_prediction", "grad_rms_vs_size", "best_lr_vs_width",
           "probes", "curvature"]
TABLES = ["log_z_drift", "instability_prediction"]


rule aggregate:
    """All runs' metrics (+ their zero-shot eval records) -> runs.csv (a row per run)."""
    input:
        metrics=ALL_METRICS,
        evals=EVALS,
    output:
        f"{RESULTS}/runs.csv",
    log:
        f"{RESULTS}/logs/aggregate.log",
    shell:
        "{PYTHON} -m analysis aggregate --metrics {input.metrics} --evals {input.evals}"
        " --runs-csv {output} > {log} 2>&1"


rule score:
    """runs.csv -> LR sensitivity per (method, size) and the ranked leaderboard."""
    input:
        rules.aggregate.output,
    output:
        scores=f"{RESULTS}/scores.csv",
        leaderboard=report(f"{RESULTS}/leaderboard.csv", category="Leaderboard",
                           caption="../report/leaderboard.rst"),
    params:
        sizes=" ".join(SIZES),
    log:
        f"{RESULTS}/logs/score.log",
    shell:
        "{PYTHON} -m analysis score --runs-csv {input} --sizes {params.sizes}"
        " --scores-csv {output.scores} --leaderboard-csv {output.leaderboard} > {log} 2>&1"


rule figures:
    """runs and scores -> the report's figures (seaborn PNGs)."""
    input:
        runs=rules.aggregate.output,
        scores=rules.score.output.scores,
    output:
        **{name: report(f"{RESULTS}/figures/{name}.png", category="Figures",
                        caption=f"../report/figures/{name}.rst", labels={"figure": name}) for name in FIGURES},
        **{f"table_{name}": f"{RESULTS}/figures/{name}.csv" for name in TABLES},
    params:
        sizes=" ".join(SIZES),
        outdir=f"{RESULTS}/figures",
    log:
        f"{RESULTS}/logs/figures.log",
    shell:
        "{PYTHON} -m analysis figures --runs-csv {input.runs} --scores-csv {input.scores}"
        " --sizes {params.sizes} --outdir {params.outdir} > {log} 2>&1"


rule describe:
    """Method docstrings, provenance (versions, git commit, date) and the resolved benchmark."""
    input:
        rules.aggregate.output,
    output:
        docs=f"{RESULTS}/method_docs.json",
        provenance=f"{RESULTS}/provenance.json",
        benchmark=f"{RESULTS}/benchmark.yaml",
    log:
        f"{RESULTS}/logs/describe.log",
    shell:
        "{PYTHON} -m stabench describe {BENCHMARK_FILE} --out {RESULTS} > {log} 2>&1"


rule report:
    """Everything above -> one self-contained report.html that opens offline."""
    input:
        leaderboard=rules.score.output.leaderboard,
        runs=rules.aggregate.output,
        figures=rules.figures.output,
        docs=rules.describe.output.docs,
        provenance=rules.describe.output.provenance,
        benchmark=rules.describe.output.benchmark,
    output:
        report(f"{RESULTS}/report.html", category="Report", caption="../report/report.rst"),
    params:
        figures_dir=f"{RESULTS}/figures",
    log:
        f"{RESULTS}/logs/report.log",
    shell:
        "{PYTHON} -m analysis report --leaderboard-csv {input.leaderboard} --runs-csv {input.runs}"
        " --figures-dir {params.figures_dir} --benchmark-yaml {input.benchmark} --benchmark-name {NAME}"
        " --method-docs {input.docs} --provenance {input.provenance} --out {output} > {log} 2>&1"
