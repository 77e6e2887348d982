"""The report's figures and tables: names, titles and sections, defined once.

The workflow (workflow/rules/analysis.smk) declares one output per name, `python -m analysis
figures` writes them, the report shows them in this order, and claims link to them by name.
Captions are not here: each figure's caption is written once, in
workflow/report/figures/<name>.rst, and used by both the HTML report and `snakemake --report`.
"""

from __future__ import annotations

RESULTS, DIAGNOSTICS = "Results", "Stability diagnostics"

FIGURES: dict[str, tuple[str, str]] = {  # name -> (title, section)
    "loss_vs_lr": ("Final validation loss against peak learning rate", RESULTS),
    "scores_vs_size": ("LR sensitivity, best loss and best LR against model size", RESULTS),
    "attn_logit_vs_lr": ("Max attention logit against peak learning rate", RESULTS),
    "loss_curves": ("Training curves", RESULTS),
    "log_z": ("Output-logit normalizer log Z over training", RESULTS),
    "instability_prediction": ("Instability prediction from early attention logits", DIAGNOSTICS),
    "grad_rms_vs_size": ("Gradient RMS against Adam's epsilon", DIAGNOSTICS),
    "probes": ("Probes over training", DIAGNOSTICS),
    "spikes": ("Loss spikes against thresholded probes", DIAGNOSTICS),
}

TABLES: dict[str, str] = {  # name -> the figure it belongs to
    "instability_prediction": "instability_prediction",
    "grad_rms_fits": "grad_rms_vs_size",
}


def figure_file(name: str) -> str:
    return f"{name}.png"


def svg_file(name: str) -> str:
    """The same figure as SVG, written beside the PNG (scalable, for papers and slides)."""
    return f"{name}.svg"


EMPTY_KEY = "stabench-empty"  # PNG text key: the sentence a figure with nothing to draw says instead


def table_file(name: str) -> str:
    return f"{name}.csv"
