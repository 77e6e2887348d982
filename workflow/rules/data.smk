rule prepare_data:
    """Corpus -> BPE tokenizer -> token arrays, once per benchmark."""
    output:
        manifest=f"{DATA_DIR}/manifest.json",
    params:
        python=PYTHON,
        benchmark=BENCHMARK_ARG,
        data=json.dumps(BENCHMARK["data"], sort_keys=True),  # a change of the data settings rebuilds
        out=lambda wc, output: str(Path(output.manifest).parent),
    conda:
        ENV
    log:
        f"{RESULTS}/logs/prepare_data.log",
    shell:
        "{params.python} -m stabench prepare {params.benchmark} --out {params.out} > {log} 2>&1"
