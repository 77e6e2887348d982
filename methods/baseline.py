"""Baseline: the small-scale proxy recipe of Wortsman et al. (2023), section 2.1, unchanged.

Pre-LN decoder-only Transformer without biases, learned positions, GELU MLP 4d, untied head;
embedding init N(0, 1/d), other weights truncated normal with std 1/sqrt(fan_in); AdamW
(0.9, 0.95, eps 1e-8), global-norm clipping at 1, linear warm-up then cosine decay to 1e-5,
independent weight decay 1e-4 (as set in the benchmark file). Every other method is measured
against this one, so it has no hooks: the engine's defaults are the baseline.
"""

VERSION = "1"
