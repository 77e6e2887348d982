"""lm-evaluation-harness model for stabench checkpoints, registered as ``stabench``.

    import stabench.evaluation.adapter   # registers the model
    lm_eval.simple_evaluate(model="stabench",
                            model_args="run_dir=results/cpu/runs/baseline/d64/lr0.01-s0,device=cpu,batch_size=16",
                            tasks=[...], task_manager=TaskManager(include_path="results/cpu/eval_tasks"))

or ``StabenchLM(run_dir=...)`` / ``StabenchLM(model=gpt, tokenizer=tok)`` passed as ``model=``.
From a shell, ``python -m stabench.evaluation.lm_eval_cli`` is the ``lm_eval`` command with this
model registered (plain ``lm_eval`` never imports stabench).

How text becomes scores (all three request types share one scoring path):

- Text is encoded with the run's own tokenizer (``tokenizer.json`` of its data folder), without
  special tokens, exactly as training encoded documents. The end-of-document id stands in for
  an empty context (lm-eval's ``prefix_token_id``), as documents were separated by it in training.
- A (context, continuation) pair is scored in windows of at most ``seq_len`` tokens: the
  continuation's tokens are all scored, and the context is left-truncated to what fits. A
  continuation longer than ``seq_len`` is scored in several windows, each with the longest
  context that fits (lm-eval's own models truncate such a continuation instead).
  ``loglikelihood_rolling`` cuts the text into lm-eval's own rolling windows
  (``get_rolling_token_windows`` + ``make_disjoint_window``, context length 1, as its models do)
  and scores each as a pair.
- Windows are batched by lm-eval's ``Collator`` (longest first), right-padded and run as one
  forward per batch; padding on the right never changes a causal model's earlier logits.
  Log-softmax is taken in float32 on the scored positions only.
- ``generate_until`` is greedy: one forward per new token over the batch (right-padded, each
  row's own last position read), stopping at any ``until`` string, the end-of-document token or
  ``max_gen_toks``. There is no KV cache: these models are small and the context is short.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
# lm_eval.models registers the built-in names lazily (placeholders); import it before our
# registration, else get_model() would see a non-empty registry and never register them.
import lm_eval.models  # noqa: F401
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import Collator
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm.auto import tqdm

from .. import paths

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 16
DEFAULT_MAX_GEN_TOKS = 64


def _bool(x: Any) -> bool:
    if isinstance(x, str):
        return x.strip().lower() in ("1", "true", "yes", "on")
    return bool(x)


def resolve_device(device: str | None) -> str:
    device = (device or "cpu").strip()
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    return device


def default_data_dir(run_dir: Path) -> Path:
    """results/<bench>/runs/<method>/<size>/<lr-seed> -> results/<bench>/data (the workflow's layout)."""
    results = paths.results_of_run(run_dir)
    candidate = paths.data_dir(results) if results is not None else None
    if candidate is None or not (candidate / "manifest.json").is_file():
        raise ValueError(f"stabench model: no data folder found for run {str(run_dir)!r} "
                         "(expected results/<bench>/data); pass data_dir=<prepared data folder>")
    return candidate


@register_model("stabench")
class StabenchLM(TemplateLM):
    """A stabench GPT as an lm-eval ``LM``.

    model_args: ``run_dir`` (a finished run folder), ``data_dir`` (its prepared data folder;
    default ``<run_dir>/../../../../data``, the workflow's layout), ``device`` (cpu, cuda,
    cuda:N, auto), ``batch_size`` (windows per forward), ``at_init`` (the same model before
    training: same seed and method transforms, no checkpoint), ``max_gen_toks``, ``progress``
    (false: no bar, whatever lm-eval asks; ``stabench eval`` in a log file passes false).
    In Python, ``model=`` (a GPT) and ``tokenizer=`` (a tokenizers.Tokenizer) may replace
    ``run_dir``/``data_dir``.
    """

    backend = "causal"

    def __init__(self, run_dir: str | None = None, data_dir: str | None = None, device: str | None = "cpu",
                 batch_size: int | str | None = DEFAULT_BATCH_SIZE, at_init: bool | str = False,
                 max_gen_toks: int = DEFAULT_MAX_GEN_TOKS, model: torch.nn.Module | None = None,
                 tokenizer=None, eot_token_id: int | None = None, progress: bool | str = True,
                 **unused: Any) -> None:
        super().__init__()
        from stabench.data.tokenizer import eos_id

        unused.pop("max_batch_size", None)  # passed by simple_evaluate; batches here are fixed-size
        unused.pop("trust_remote_code", None)
        if unused:
            log.warning("stabench model: ignoring unknown model_args %s", sorted(unused))
        self._device = torch.device(resolve_device(device))
        self.at_init = _bool(at_init)
        self.progress = _bool(progress)
        self.run_dir = Path(run_dir) if run_dir else None
        if model is None:
            if self.run_dir is None:
                raise ValueError("stabench model: pass run_dir=<finished run folder> (or model= and tokenizer=)")
            from stabench.runs import load_run_model

            model, self.metrics = load_run_model(self.run_dir, at_init=self.at_init, device=str(self._device))
        else:
            self.metrics = {}
            model = model.to(self._device).eval()
        if tokenizer is None:
            if self.run_dir is None and data_dir is None:
                raise ValueError("stabench model: pass data_dir=<prepared data folder> or tokenizer=")
            from stabench.runs import run_tokenizer

            tokenizer = run_tokenizer(Path(data_dir) if data_dir else default_data_dir(self.run_dir))
        self.model = model
        self.tokenizer = tokenizer
        self._eot = int(eot_token_id) if eot_token_id is not None else eos_id(tokenizer)
        self.max_length = int(model.seq_len)
        if batch_size in (None, "", "auto") or str(batch_size).startswith("auto"):
            batch_size = DEFAULT_BATCH_SIZE
        self.batch_size = max(1, int(batch_size))
        self.max_gen_toks = int(max_gen_toks)
        vocab = model.head.out_features if hasattr(model, "head") else None
        if vocab is not None and tokenizer.get_vocab_size() > vocab:
            raise ValueError(f"tokenizer has {tokenizer.get_vocab_size()} tokens but the model only {vocab}: "
                             "wrong data_dir for this run?")

    # lm-eval passes batch_size=1 (its CLI default) and device as extra config; what the user
    # wrote in model_args must win over those defaults, and a key given twice must not raise.
    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None):
        from lm_eval.utils import simple_parse_args_string

        return cls.create_from_arg_obj(simple_parse_args_string(arg_string), additional_config)

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict, additional_config: dict | None = None):
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None}
        return cls(**{**extra, **arg_dict})

    # ------------------------------------------------------------------ tokenization
    @property
    def eot_token_id(self) -> int:
        return self._eot

    @property
    def tokenizer_name(self) -> str:
        return "stabench-" + hashlib.sha256(self.tokenizer.to_str().encode("utf-8")).hexdigest()[:16]

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        return list(self.tokenizer.encode(string, add_special_tokens=False).ids)

    def tok_decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(list(tokens), skip_special_tokens=False)

    # ------------------------------------------------------------------ scoring
    def _windows(self, context: list[int], continuation: list[int]) -> list[tuple[list[int], list[int]]]:
        """(input tokens, scored targets) windows that score every continuation token once.

        The targets are the last len(targets) tokens predicted by the input; each input is the
        longest left-truncated stretch of context + continuation that fits in seq_len.
        """
        if not context:
            raise ValueError("empty context: lm-eval replaces it by the prefix token")
        tokens = context + continuation
        out = []
        for start in range(len(context), len(tokens), self.max_length):
            end = min(start + self.max_length, len(tokens))
            out.append((tokens[max(0, end - 1 - self.max_length):end - 1], tokens[start:end]))
        return out

    @torch.no_grad()
    def _score_windows(self, windows: list[tuple[list[int], list[int]]], desc: str = "",
                       disable_tqdm: bool = True) -> list[tuple[float, bool]]:
        """(sum log p(targets), all targets greedy) per window, in input order, batched by length."""
        batches = Collator(windows, sort_fn=lambda w: (-len(w[0]), tuple(w[0])))
        results: list[tuple[float, bool]] = []
        bar = tqdm(total=len(windows), desc=desc or "stabench loglikelihood", disable=disable_tqdm)
        for chunk in batches.get_batched(n=self.batch_size):
            width = max(len(inp) for inp, _ in chunk)
            batch = torch.zeros(len(chunk), width, dtype=torch.long)
            for row, (inp, _) in enumerate(chunk):
                batch[row, :len(inp)] = torch.tensor(inp, dtype=torch.long)
            logits = self.model(batch.to(self.device)[None])[0]  # a one-member ensemble: (B, T, V)
            for row, (inp, targets) in enumerate(chunk):
                n = len(targets)
                logp = F.log_softmax(logits[row, len(inp) - n:len(inp)].float(), dim=-1)  # (n, V)
                tgt = torch.tensor(targets, dtype=torch.long, device=logp.device)
                results.append((logp.gather(-1, tgt[:, None]).sum().item(), bool((logp.argmax(-1) == tgt).all().item())))
            bar.update(len(chunk))
        bar.close()
        return batches.get_original(results)

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        return super().loglikelihood(requests, disable_tqdm=disable_tqdm or not self.progress)

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        """requests: ((context, continuation), context_tokens, continuation_tokens)."""
        disable_tqdm = disable_tqdm or not self.progress
        windows, owner = [], []
        for i, (_, ctx, cont) in enumerate(requests):
            for w in self._windows(list(ctx), list(cont)):
                windows.append(w)
                owner.append(i)
        scored = self._score_windows(windows, "loglikelihood", disable_tqdm)
        out = [[0.0, True] for _ in requests]
        for i, (ll, greedy) in zip(owner, scored):
            out[i][0] += ll
            out[i][1] = out[i][1] and greedy
        answers = [(ll, greedy) for ll, greedy in out]
        for (pair, _, _), answer in zip(requests, answers):
            if pair is not None:
                self.cache_hook.add_partial("loglikelihood", pair, answer)
        return answers

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Total log-likelihood of each text, conditioned only on the end-of-document token."""
        disable_tqdm = disable_tqdm or not self.progress
        pieces, owner = [], []
        for i, req in enumerate(requests):
            windows = get_rolling_token_windows(token_list=self.tok_encode(req.args[0]), prefix_token=self.prefix_token_id,
                                                max_seq_len=self.max_length, context_len=1)
            for context, continuation in map(make_disjoint_window, windows):
                pieces.append((None, context, continuation))
                owner.append(i)
        answers = [0.0] * len(requests)
        for i, (ll, _) in zip(owner, self._loglikelihood_tokens(pieces, disable_tqdm=disable_tqdm)):
            answers[i] += ll
        for req, ll in zip(requests, answers):
            self.cache_hook.add_partial("loglikelihood_rolling", (req.args[0],), ll)
        return answers

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        disable_tqdm = disable_tqdm or not self.progress
        items = []
        for req in requests:
            context, gen_kwargs = req.args[0], dict(req.args[1] or {})
            until = gen_kwargs.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(gen_kwargs.pop("max_gen_toks", self.max_gen_toks))
            if gen_kwargs.get("do_sample") or float(gen_kwargs.get("temperature", 0.0) or 0.0) > 0:
                log.warning("stabench model: sampling is not supported; decoding greedily")
            ids = self.tok_encode(context) or [self.prefix_token_id]
            items.append({"ids": ids, "until": until, "max_new": max_new})
        for i, item in enumerate(items):
            item["index"] = i
        batches = Collator(items, sort_fn=lambda it: (-len(it["ids"]), it["index"]))
        outputs: list[str] = []
        bar = tqdm(total=len(items), desc="stabench generate_until", disable=disable_tqdm)
        for batch in batches.get_batched(n=self.batch_size):
            texts = self._greedy(batch)
            for item, text in zip(batch, texts):
                self.cache_hook.add_partial("generate_until", requests[item["index"]].args, text)
            outputs += texts
            bar.update(len(batch))
        bar.close()
        return batches.get_original(outputs)

    def _greedy(self, batch: list[dict]) -> list[str]:
        seqs = [list(it["ids"]) for it in batch]
        new = [[] for _ in batch]
        done = [it["max_new"] <= 0 for it in batch]
        texts = [""] * len(batch)
        for _ in range(max(it["max_new"] for it in batch)):
            live = [r for r in range(len(batch)) if not done[r]]
            if not live:
                break
            inputs = [seqs[r][-self.max_length:] for r in live]
            width = max(len(x) for x in inputs)
            x = torch.zeros(len(live), width, dtype=torch.long)
            for row, inp in enumerate(inputs):
                x[row, :len(inp)] = torch.tensor(inp, dtype=torch.long)
            logits = self.model(x.to(self.device)[None])[0]
            last = torch.tensor([len(inp) - 1 for inp in inputs], device=logits.device)
            nxt = logits[torch.arange(len(live), device=logits.device), last].argmax(-1).tolist()
            for r, tok in zip(live, nxt):
                if tok == self.eot_token_id:
                    done[r] = True
                    continue
                seqs[r].append(tok)
                new[r].append(tok)
                texts[r] = self.tok_decode(new[r])
                cut = [texts[r].index(s) for s in batch[r]["until"] if s and s in texts[r]]
                if cut:
                    texts[r] = texts[r][:min(cut)]
                    done[r] = True
                elif len(new[r]) >= batch[r]["max_new"]:
                    done[r] = True
        return texts
