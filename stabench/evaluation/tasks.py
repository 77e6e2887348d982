"""Build the offline zero-shot tasks from a benchmark's held-out documents.

Input: a prepared data folder (``val_docs.jsonl``, the documents the split held out; never a
training document). Output, in ``results/<bench>/eval_tasks/``::

    stabench_cloze.jsonl          {"id", "doc_id", "context", "target"}
    stabench_cloze.yaml           lm-eval task over it (absolute path)
    stabench_continuation.jsonl   {"id", "doc_id", "context", "endings": [4], "label"}
    stabench_continuation.yaml
    manifest.json                 settings, counts, hashes; written LAST

- ``stabench_cloze`` (LAMBADA-style): a passage made of a document's leading whole sentences
  (at most ``CLOZE_MAX_WORDS`` words, at least the first sentence), its final punctuation
  removed; the target is " " + its last word, which must be a plain word (letters, inner ' or
  -), so the task asks for a word and not for a number or a bracket.
- ``stabench_continuation`` (HellaSwag-style): context = a document's leading sentence(s) (up
  to ``CONT_CONTEXT_WORDS`` words), true ending = the sentence that follows; 3 distractors are
  sentences drawn (seeded) from 3 other held-out documents at the same position, so they read
  like following sentences too, and of about the same length as the true ending (else a model
  wins by preferring the shortest ending); the gold position is drawn too.

Everything is a function of (val_docs.jsonl, n_examples, seed): the same inputs give the
same bytes. At most ``n_examples`` examples per task (a seeded choice of documents when more
are eligible; fewer when the held-out split is small).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from pathlib import Path

import numpy as np

from ..config import ConfigError
from ..io import write_text
from .templates import TEMPLATES

CLOZE, CONTINUATION = "stabench_cloze", "stabench_continuation"
OFFLINE_TASKS = (CLOZE, CONTINUATION)
LOCAL_NAMES = (*OFFLINE_TASKS, "stabench")  # the task YAMLs' tag "stabench" names both
MANIFEST = "manifest.json"


def check_task_names(eval_settings: dict) -> None:
    """A name that starts like an offline task must be one: a typo would be looked for on the
    hub. ``eval_settings`` is a benchmark's ``eval`` section; a ConfigError names the field."""
    for field in ("tasks", "init_tasks"):
        for task in eval_settings[field]:
            if task.startswith("stabench") and task not in LOCAL_NAMES:
                close = difflib.get_close_matches(task, LOCAL_NAMES, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ConfigError(f"eval.{field}: got {task!r}{hint}; the offline tasks are "
                                  f"{', '.join(LOCAL_NAMES)}")


def check_tasks_offline(eval_settings: dict) -> None:
    """Without the hub, only the offline tasks can be evaluated: a name that is not one (a typo,
    or an lm-eval task whose data is on the hub) is a ConfigError naming the field, with the
    closest offline task and the list of them. ``eval_settings`` is a benchmark's ``eval`` section."""
    if eval_settings["runs"] == "none":
        return
    for task in eval_settings["tasks"]:
        if task not in LOCAL_NAMES:
            close = difflib.get_close_matches(task, LOCAL_NAMES, n=1, cutoff=0.5)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"eval.tasks: got {task!r}{hint}, which is no offline task, and the Hugging Face hub "
                              "is unreachable (no network, or HF_HUB_OFFLINE set); the offline tasks are "
                              f"{', '.join(LOCAL_NAMES)}")
BUILDER_VERSION = "2"

CLOZE_MAX_WORDS = 60
CONT_CONTEXT_WORDS = 40
ENDING_WORDS = (4, 40)  # an ending (true or distractor) has this many words, inclusive
N_CHOICES = 4

# A sentence ends at . ! ? (optionally closed by a quote or bracket) before a space and a
# capital letter, digit or opening quote; crude, but deterministic and good enough for leads.
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"'”’)\]]?\s+(?=[A-Z0-9\"“(])")
_WORD = re.compile(r"^[^\W\d_]+(?:['’-][^\W\d_]+)*$")
_TRAILING = ".,;:!?\"'”’)]"


def read_val_docs(data_dir: str | Path) -> list[dict]:
    path = Path(data_dir) / "val_docs.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run `stabench prepare` first")
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(" ".join(text.split())) if s.strip()]


def cloze_example(text: str) -> dict | None:
    """{"context", "target"} from a document, or None when no passage ends in a plain word."""
    sents = sentences(text)
    n = 1
    while n < len(sents) and len(" ".join(sents[:n + 1]).split()) <= CLOZE_MAX_WORDS:
        n += 1
    for k in range(n, 0, -1):  # longest passage first
        words = " ".join(sents[:k]).split()
        last = words[-1].rstrip(_TRAILING)
        if len(words) >= 2 and len(last) >= 2 and _WORD.match(last):
            return {"context": " ".join(words[:-1]), "target": " " + last}
    return None


def _continuation_parts(text: str) -> tuple[str, str] | None:
    """(context, true ending) of a document, or None."""
    sents = sentences(text)
    k = 1
    while k + 1 < len(sents) and len(" ".join(sents[:k + 1]).split()) <= CONT_CONTEXT_WORDS:
        k += 1
    if k >= len(sents):
        return None
    ending = sents[k]
    if not ENDING_WORDS[0] <= len(ending.split()) <= ENDING_WORDS[1]:
        return None
    return " ".join(sents[:k]), ending


def _choose(n_eligible: int, n: int, rng: np.random.Generator) -> list[int]:
    if n_eligible <= n:
        return list(range(n_eligible))
    return sorted(rng.choice(n_eligible, size=n, replace=False).tolist())


def build_cloze(docs: list[dict], n: int, seed: int) -> list[dict]:
    eligible = [(d, ex) for d in docs if (ex := cloze_example(d["text"])) is not None]
    rng = np.random.default_rng([seed, 1])
    return [{"id": i, "doc_id": eligible[j][0]["id"], **eligible[j][1]}
            for i, j in enumerate(_choose(len(eligible), n, rng))]


def build_continuation(docs: list[dict], n: int, seed: int) -> list[dict]:
    parts = [(d, p) for d in docs if (p := _continuation_parts(d["text"])) is not None]
    if len(parts) < N_CHOICES:
        return []
    rng = np.random.default_rng([seed, 2])
    chosen = _choose(len(parts), n, rng)
    out = []
    for j in chosen:
        doc, (context, ending) = parts[j]
        distractors = _distractors(parts, j, ending, rng)
        if len(distractors) < N_CHOICES - 1:
            continue
        label = int(rng.integers(N_CHOICES))
        endings = distractors[:label] + [ending] + distractors[label:]
        out.append({"id": len(out), "doc_id": doc["id"], "context": context, "endings": endings, "label": label})
    return out


def _distractors(parts: list, j: int, ending: str, rng: np.random.Generator) -> list[str]:
    """N_CHOICES - 1 endings of other documents, drawn among those of about the true ending's
    length (within 25% of its words, widened until enough), so that a model cannot score by
    preferring the shortest ending (summed log-likelihoods favour short texts)."""
    n = len(ending.split())
    others = [k for k in range(len(parts)) if k != j and parts[k][1][1] != ending]
    tol = max(2, round(0.25 * n))
    while True:
        pool = sorted({parts[k][1][1] for k in others if abs(len(parts[k][1][1].split()) - n) <= tol})
        if len(pool) >= N_CHOICES - 1 or tol > 1000:
            break
        tol *= 2
    return [pool[i] for i in rng.choice(len(pool), size=min(N_CHOICES - 1, len(pool)), replace=False)]


def _jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows)


def task_yaml(task: str, data_file: Path) -> str:
    return TEMPLATES[task].replace("__DATA_FILE__", json.dumps(str(Path(data_file).resolve())))


def build_tasks(data_dir: str | Path, out_dir: str | Path, *, n_examples: int = 500, seed: int = 0) -> dict:
    """Write the offline tasks' jsonl + YAML files and the manifest; return the manifest."""
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    docs = read_val_docs(data_dir)
    built = {CLOZE: build_cloze(docs, n_examples, seed), CONTINUATION: build_continuation(docs, n_examples, seed)}
    data_manifest = json.loads((data_dir / "manifest.json").read_text(encoding="utf-8")) \
        if (data_dir / "manifest.json").is_file() else {}
    manifest = {
        "builder_version": BUILDER_VERSION,
        "n_examples": n_examples,
        "seed": seed,
        "source": str((data_dir / "val_docs.jsonl").resolve()),
        "val_docs": len(docs),
        "val_docs_sha256": data_manifest.get("val_docs_sha256"),
        "tasks": {},
    }
    for task, rows in built.items():
        text = _jsonl(rows)
        jsonl = out_dir / f"{task}.jsonl"
        write_text(jsonl, text)
        write_text(out_dir / f"{task}.yaml", task_yaml(task, jsonl))
        manifest["tasks"][task] = {"examples": len(rows), "jsonl": jsonl.name, "yaml": f"{task}.yaml",
                                   "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest()}
    write_text(out_dir / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    return manifest
