"""Progress in a log file is plain lines (issue 21): a bar redrawn in a file that Snakemake
collects is hundreds of carriage returns. In a terminal the bars stay. The whole workflow's
logs are checked in tests/test_offline.py (the smoke run)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from stabench.data.tokens import encode_documents

REPO = Path(__file__).resolve().parent.parent


def test_tokenizing_into_a_log_is_one_line_per_split(capsys):
    from tokenizers import Tokenizer, models, pre_tokenizers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.add_special_tokens(["<|endoftext|>"])
    tokens = encode_documents(tok, ["one", "two"], 0, np.dtype(np.uint16), progress=True, desc="tokenize train")
    err = capsys.readouterr().err  # pytest's capture is no terminal
    assert "\r" not in err and err.count("\n") == 1
    assert err.startswith(f"tokenize train: 2 documents, {tokens.size} tokens (")
    encode_documents(tok, ["one"], 0, np.dtype(np.uint16), progress=False)
    assert capsys.readouterr().err == ""


LIBRARY_BARS = """
import sys
from tqdm import tqdm
from tqdm.auto import tqdm as auto_tqdm
from stabench.progress import library_bars
print(library_bars(sys.argv[1] == "on"), flush=True)
for _ in tqdm(range(3), desc="plain"):
    pass
for _ in auto_tqdm(range(3), desc="auto"):
    pass
import datasets
print(datasets.is_progress_bar_enabled(), flush=True)
"""


def test_library_bars_are_off_when_stderr_is_a_file(tmp_path):
    err = tmp_path / "err.log"
    for setting in ("on", "off"):
        with open(err, "w") as stderr:
            proc = subprocess.run([sys.executable, "-c", LIBRARY_BARS, setting], stdout=subprocess.PIPE,
                                  stderr=stderr, text=True, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
                                  timeout=120)
        assert proc.returncode == 0, err.read_text()
        assert proc.stdout.split() == ["False", "False"], (setting, proc.stdout)
        assert err.read_text() == "", (setting, err.read_text())
