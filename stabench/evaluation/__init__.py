"""Zero-shot evaluation of stabench runs through EleutherAI's lm-evaluation-harness.

- ``adapter``: ``StabenchLM``, an lm-eval ``LM`` registered as ``stabench`` (import it to
  register); ``python -m stabench.evaluation.lm_eval_cli`` is the ``lm_eval`` CLI with it.
- ``tasks``: offline tasks (``stabench_cloze``, ``stabench_continuation``) built from the
  benchmark's held-out documents as jsonl + lm-eval YAML (``stabench build-tasks``).
- ``runner``: evaluate a run, or the best-LR run of a (method, size), on offline and standard
  tasks; unavailable tasks are skipped with the reason (``stabench eval``).

``import stabench.evaluation`` does not import lm-eval; import ``.adapter`` to register the model.
"""

from __future__ import annotations

from .tasks import OFFLINE_TASKS

__all__ = ["OFFLINE_TASKS"]
