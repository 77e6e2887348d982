"""Tiny constant Adam epsilon, 1e-15 for every layer (Everett et al., ICML 2024).

The simplest cure Everett et al. give for epsilon underflow at large width: make eps so
small that it never dominates sqrt(v) at any practical width (the baseline uses 1e-8;
Wortsman et al. compare 1e-6, 1e-8, 1e-15). Implemented by setting optimizer.eps in the run
config (arg ``eps``), so the recorded config shows it. Composes with per-layer eps methods
(they read the configured eps as their base).
"""

VERSION = "1"
ARGS = {"eps": 1e-15}


def configure(config, args):
    config["optimizer"]["eps"] = float(args["eps"])
