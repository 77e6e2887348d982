"""The ``lm_eval`` command with the ``stabench`` model registered.

``lm_eval`` alone never imports stabench, so ``--model stabench`` would be unknown to it. This
wrapper imports the adapter (which registers the model) and hands over to lm-eval's own CLI,
with every argument unchanged::

    python -m stabench.evaluation.lm_eval_cli --model stabench \\
        --model_args run_dir=results/cpu/runs/baseline/d64/lr0.01-s0,device=cpu,batch_size=16 \\
        --include_path results/cpu/eval_tasks --tasks stabench_cloze,stabench_continuation

``data_dir=`` defaults to the run's benchmark data folder (``results/<bench>/data``); add
``at_init=True`` for the untrained model. Values given in ``--model_args`` win over lm-eval's
own ``--batch_size``/``--device`` defaults.
"""

from __future__ import annotations

import stabench.evaluation.adapter  # noqa: F401  (registers "stabench")


def main() -> None:
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()


if __name__ == "__main__":
    main()
