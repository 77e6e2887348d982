"""runs -> runs.csv -> scores, leaderboard, claims, figures -> report.html (analysis/)."""

import analysis
from analysis.catalog import FIGURES, TABLES, figure_file, svg_file, table_file
from analysis.claims import ClaimError, claim_files, claims_dirs, load_claims
from analysis.settings import resolve as analysis_settings

WORKFLOW_DIR = Path(workflow.current_basedir).parent  # workflow/, in a clone or shipped in the package
# Claim files: ./claims of the working folder first, then the package's (a file name's first one
# wins, as for methods; analysis.claims.claims_dirs).
CLAIMS_DIRS = [str(d) for d in claims_dirs()]

try:  # the claims the benchmark names must exist: say so before training (load_benchmark checked the reference)
    load_claims(CLAIMS_DIRS, analysis_settings(BENCHMARK).claims)
except ClaimError as exc:
    raise WorkflowError(str(exc)) from None

# The analysis package's sources (the clone's, or the installed package's): a change in them
# reruns the analysis rules (not the training).
ANALYSIS_CODE = sorted(str(p) for p in Path(analysis.__file__).parent.rglob("*") if p.suffix in (".py", ".j2", ".css"))
CAPTIONS_DIR = str(WORKFLOW_DIR / "report" / "figures")

rule describe:
    """Method docstrings, provenance (versions, git commit, date) and the resolved benchmark
    (defaults filled, analysis settings included); reruns when any run changes."""
    input:
        benchmark=BENCHMARK_FILE,
        metrics=ALL_METRICS,
    output:
        docs=f"{RESULTS}/method_docs.json",
        provenance=f"{RESULTS}/provenance.json",
        benchmark=f"{RESULTS}/benchmark.yaml",
    params:
        python=PYTHON,
        out=lambda wildcards, output: str(Path(output.benchmark).parent),
    conda:
        ENV
    log:
        f"{RESULTS}/logs/describe.log",
    shell:
        "{params.python} -m stabench describe {input.benchmark} --out {params.out} > {log} 2>&1"


# Runs taken from reference results (common.smk, stabench.reference): their rows, and where
# they came from (for the report).
REFERENCE_ROWS = [f"{RESULTS}/reference_runs.csv"] if REFERENCE_RUNS else []
REFERENCE_JSON = [f"{RESULTS}/reference.json"] if REFERENCE_RUNS else []

if REFERENCE_RUNS:
    from stabench.reference import write_rows
    from stabench.io import write_json

    rule reference_rows:
        """The reference's rows of the runs taken from it (relabelled as this grid names them),
        and its provenance; reruns when the set of runs taken changes."""
        input:
            table=str(REFERENCE.folder / "runs.csv"),
        output:
            rows=REFERENCE_ROWS[0],
            about=REFERENCE_JSON[0],
        params:
            runs=json.dumps({"/".join(run): identity for run, identity in sorted(REFERENCE_RUNS.items())}),
        log:
            f"{RESULTS}/logs/reference_rows.log",
        run:
            write_rows(output.rows, REFERENCE, REFERENCE_RUNS)
            write_json(output.about, {"folder": str(REFERENCE.folder), "describe": REFERENCE.describe(),
                                      "provenance": REFERENCE.provenance,
                                      "taken": [list(pair) for pair in sorted(FROM_REFERENCE)]})
            Path(log[0]).write_text(f"{len(REFERENCE_RUNS)} runs from the reference {REFERENCE.describe()}\n")


rule aggregate:
    """The trained runs' metrics and histories (+ zero-shot eval records), and the rows taken
    from reference results -> runs.csv (a row per run, with the benchmark's l0, effective losses
    and per-run probe statistics)."""
    input:
        metrics=ALL_METRICS,
        evals=EVALS,
        reference=REFERENCE_ROWS,
        benchmark=rules.describe.output.benchmark,
        code=ANALYSIS_CODE,
    output:
        f"{RESULTS}/runs.csv",
    params:
        python=PYTHON,
        reference=lambda wildcards, input: f"--reference-rows {input.reference}" if input.reference else "",
    conda:
        ENV
    log:
        f"{RESULTS}/logs/aggregate.log",
    shell:
        "{params.python} -m analysis aggregate --metrics {input.metrics} --evals {input.evals} {params.reference}"
        " --benchmark-yaml {input.benchmark} --runs-csv {output} > {log} 2>&1"


rule score:
    """runs.csv -> scores per (method, size) and the ranked leaderboard, with bootstrap intervals."""
    input:
        runs=rules.aggregate.output,
        benchmark=rules.describe.output.benchmark,
        code=ANALYSIS_CODE,
    output:
        scores=f"{RESULTS}/scores.csv",
        leaderboard=report(f"{RESULTS}/leaderboard.csv", category="Leaderboard",
                           caption="../report/leaderboard.rst"),
    params:
        python=PYTHON,
    conda:
        ENV
    log:
        f"{RESULTS}/logs/score.log",
    shell:
        "{params.python} -m analysis score --runs-csv {input.runs} --benchmark-yaml {input.benchmark}"
        " --scores-csv {output.scores} --leaderboard-csv {output.leaderboard} > {log} 2>&1"


rule claims:
    """runs.csv + the claim files -> claims.csv (a verdict per claim)."""
    input:
        runs=rules.aggregate.output,
        benchmark=rules.describe.output.benchmark,
        claims=[str(p) for p in claim_files(CLAIMS_DIRS)],
        code=ANALYSIS_CODE,
    output:
        report(f"{RESULTS}/claims.csv", category="Claims", caption="../report/claims.rst"),
    params:
        python=PYTHON,
        claims_dirs=CLAIMS_DIRS,
    conda:
        ENV
    log:
        f"{RESULTS}/logs/claims.log",
    shell:
        "{params.python} -m analysis claims --runs-csv {input.runs} --benchmark-yaml {input.benchmark}"
        " --claims-dir {params.claims_dirs:q} --claims-csv {output} > {log} 2>&1"


rule figures:
    """runs and scores -> the report's figures (seaborn PNGs, each with its SVG) and prediction tables."""
    input:
        runs=rules.aggregate.output,
        scores=rules.score.output.scores,
        benchmark=rules.describe.output.benchmark,
        code=ANALYSIS_CODE,
    output:
        **{name: report(f"{RESULTS}/figures/{figure_file(name)}", category="Figures",
                        caption=f"../report/figures/{name}.rst", labels={"figure": name}) for name in FIGURES},
        **{f"svg_{name}": f"{RESULTS}/figures/{svg_file(name)}" for name in FIGURES},
        **{f"table_{name}": f"{RESULTS}/figures/{table_file(name)}" for name in TABLES},
    params:
        python=PYTHON,
        outdir=lambda wildcards, output: str(Path(output[0]).parent),
    conda:
        ENV
    log:
        f"{RESULTS}/logs/figures.log",
    shell:
        "{params.python} -m analysis figures --runs-csv {input.runs} --scores-csv {input.scores}"
        " --benchmark-yaml {input.benchmark} --outdir {params.outdir} > {log} 2>&1"


rule report:
    """Everything above -> one self-contained report.html that opens offline."""
    input:
        leaderboard=rules.score.output.leaderboard,
        runs=rules.aggregate.output,
        claims=rules.claims.output,
        figures=rules.figures.output,
        docs=rules.describe.output.docs,
        provenance=rules.describe.output.provenance,
        benchmark=rules.describe.output.benchmark,
        code=ANALYSIS_CODE,
        captions=[f"{CAPTIONS_DIR}/{name}.rst" for name in FIGURES],
        job_times=job_times(),
        reference=REFERENCE_JSON,
    output:
        report(f"{RESULTS}/report.html", category="Report", caption="../report/report.rst"),
    params:
        python=PYTHON,
        reference=lambda wildcards, input: f"--reference-results {input.reference}" if input.reference else "",
        figures_dir=lambda wildcards, input: str(Path(input.figures[0]).parent),
        captions_dir=lambda wildcards, input: str(Path(input.captions[0]).parent),
    conda:
        ENV
    log:
        f"{RESULTS}/logs/report.log",
    shell:
        "{params.python} -m analysis report --leaderboard-csv {input.leaderboard} --runs-csv {input.runs}"
        " --claims-csv {input.claims} --figures-dir {params.figures_dir} --captions-dir {params.captions_dir}"
        " --benchmark-yaml {input.benchmark} --method-docs {input.docs} --provenance {input.provenance}"
        " --job-times {input.job_times} {params.reference} --out {output} > {log} 2>&1"
