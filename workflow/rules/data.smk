rule prepare_data:
    """Corpus -> BPE tokenizer -> token arrays, once per benchmark."""
    input:
        benchmark=BENCHMARK_FILE,
    output:
        manifest=f"{DATA_DIR}/manifest.json",
    params:
        python=PYTHON,
        data=json.dumps(BENCHMARK["data"], sort_keys=True),  # a change of the data settings rebuilds
        out=lambda wc, output: str(Path(output.manifest).parent),
    conda:
        ENV
    log:
        f"{RESULTS}/logs/prepare_data.log",
    shell:
        "{params.python} -m stabench prepare {input.benchmark} --out {params.out} > {log} 2>&1"
