rule prepare_data:
    """Corpus -> BPE tokenizer -> token arrays, once per benchmark."""
    output:
        manifest=f"{RESULTS}/data/manifest.json",
    params:
        data=json.dumps(BENCHMARK["data"], sort_keys=True),
    log:
        f"{RESULTS}/logs/prepare_data.log",
    shell:
        "{PYTHON} -m stabench prepare {BENCHMARK_FILE} --out {RESULTS}/data > {log} 2>&1"
