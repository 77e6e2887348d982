"""lm-eval task YAML templates of the offline tasks, filled in by ``tasks.build_tasks``.

``__DATA_FILE__`` becomes the absolute path of the task's jsonl file, so the YAML that lands in
``results/<bench>/eval_tasks/`` works from any working directory with
``TaskManager(include_path=...)`` or ``lm_eval --include_path``. They are kept as text in a
module (not package data) so that a non-editable install carries them too.

Both read local json through the ``datasets`` ``json`` builder (``dataset_path: json`` plus
``data_files``), which needs no network.
"""

CLOZE = """\
# Written by `stabench build-tasks`: do not edit (rebuilt from the held-out documents).
# LAMBADA-style cloze on held-out documents: predict the last word of a passage.
tag:
  - stabench
task: stabench_cloze
dataset_path: json
dataset_name: null
dataset_kwargs:
  data_files:
    test: __DATA_FILE__
output_type: loglikelihood
test_split: test
doc_to_text: context
doc_to_target: target            # " " + the last word: the word-boundary space is in the target
metric_list:                     # as lambada_openai
  - metric: perplexity           # exp(-mean log p(target | context)) over examples
    aggregation: perplexity
    higher_is_better: false
  - metric: acc                  # target is the greedy continuation
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""

CONTINUATION = """\
# Written by `stabench build-tasks`: do not edit (rebuilt from the held-out documents).
# HellaSwag-style: choose the true next sentence of a held-out passage among 4 endings,
# the other 3 being sentences of other held-out documents.
tag:
  - stabench
task: stabench_continuation
dataset_path: json
dataset_name: null
dataset_kwargs:
  data_files:
    test: __DATA_FILE__
output_type: multiple_choice
test_split: test
doc_to_text: context
doc_to_choice: endings           # scored as context + " " + ending
doc_to_target: label
metric_list:
  - metric: acc                  # argmax of summed log-likelihoods
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm             # argmax of log-likelihood per character of the ending
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""

TEMPLATES = {"stabench_cloze": CLOZE, "stabench_continuation": CONTINUATION}
