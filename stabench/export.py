"""Export a trained run as a Hugging Face GPT-2 model: ``config.json``, ``model.safetensors``
and the run's tokenizer, which ``transformers.AutoModelForCausalLM`` loads without custom code.

stabench's GPT (``stabench.model``) is GPT-2's architecture with fewer parts: pre-LN blocks,
learned positions, exact-erf GELU MLP, LayerNorm before attention, MLP and the head. So it
maps exactly onto ``GPT2LMHeadModel`` (``activation_function: gelu``, ``tie_word_embeddings:
false``, dropout 0) with every bias set to zero: the LayerNorm biases, the attention and MLP
projection biases. Llama does not map (RMSNorm, rotary positions, gated SiLU MLP).

What the methods change is folded into the weights where that is exact:
- a weight reparameterized with ``torch.nn.utils.parametrize`` (everett_mup's multipliers,
  a method's gates) is exported as the weight the forward pass uses (multiplier x raw weight);
- an attention scale other than 1/sqrt(head_dim) (mup_full's 1/head_dim) is folded into the
  query weights: q' = q x scale x sqrt(head_dim), since GPT-2 divides by sqrt(head_dim);
- the blocks a depth schedule has not unlocked (``GPT.active_blocks``) are left out: the
  forward pass does not run them;
- loss terms (z-loss), update rules, LR and batch schedules leave nothing in the model.
A model option with no exact GPT-2 equivalent is refused in one line naming it: qk-layernorm
(a LayerNorm on queries and keys: GPT-2 has none, and the transformers classes that have one
use rotary positions), or any module a method adds or replaces.

A run folder holds one member's weights, also for a member of a pack (``stabench.checkpoint``),
so exporting a run exports that run's member. Weights are written in float32, as trained.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import parametrize

from . import paths
from .config import ConfigError
from .io import write_json, write_text
from .model import GPT, MLP, Attention, Block, Embedding, LayerNorm, Linear
from .runs import load_run_model, run_tokenizer

MODEL_FILE = "model.safetensors"
PROVENANCE_FILE = "stabench_export.json"
# Module types whose stock forward stabench's GPT runs; a method that adds another (a norm,
# a gate module outside a parametrization) changes the computation in a way GPT-2 lacks.
_STOCK = (GPT, Block, Attention, MLP, Linear, Embedding, LayerNorm, nn.ModuleList, nn.Identity)


class ExportError(ConfigError):
    """A run that cannot be exported exactly; the message is one line naming the option."""


def _base_type(module: nn.Module) -> type:
    """The module's class, seen through parametrize's generated subclass."""
    kind = type(module)
    return kind.__bases__[0] if parametrize.is_parametrized(module) else kind


def _check_modules(model: GPT) -> None:
    for name, module in model.named_modules():
        if ".parametrizations." in f".{name}." or isinstance(module, parametrize.ParametrizationList):
            continue  # a parametrization gives a fixed weight at inference: read through it
        where = name or "model"
        if name.endswith(("q_norm", "k_norm")) and not isinstance(module, nn.Identity):
            raise ExportError(f"{where} is {type(module).__name__}: qk-layernorm (a norm on queries and keys) has "
                              "no exact equivalent in transformers' GPT-2, the only class with stabench's learned "
                              "positions; this run cannot be exported")
        if _base_type(module) not in _STOCK:
            raise ExportError(f"{where} is a {type(module).__name__}, a module a method added that GPT-2 has no "
                              "equivalent of; this run cannot be exported")
        if "forward" in vars(module):
            raise ExportError(f"{where}.forward was replaced by a method; this run cannot be exported")


def _matrix(module: nn.Module) -> torch.Tensor:
    """The (out, in) or (rows, dim) weight the forward pass uses, parametrizations applied."""
    with torch.no_grad():
        weight = module.weight
    if weight.dim() < 2 or weight.shape[0] != 1:
        raise ExportError(f"a weight of shape {tuple(weight.shape)} is not one member's; export a run folder")
    return weight[0].detach().float()


def gpt2_weights(model: GPT) -> tuple[dict, dict[str, torch.Tensor]]:
    """(GPT-2 config fields, GPT-2 state dict) computing what ``model`` (K = 1) computes."""
    _check_modules(model)
    d = model.tok_emb.embedding_dim
    blocks = list(model.blocks[: model.active_blocks])
    eps = {m.eps for m in model.modules() if isinstance(m, LayerNorm)}
    if len(eps) != 1:
        raise ExportError(f"LayerNorms with different eps {sorted(eps)}: GPT-2 has one layer_norm_epsilon")
    heads = {b.attn.n_heads for b in blocks}
    inner = {b.mlp.up.out_features for b in blocks}
    if len(heads) > 1 or len(inner) > 1:
        raise ExportError("blocks of different head counts or MLP widths: GPT-2 has one of each")
    zeros = torch.zeros
    state = {
        "transformer.wte.weight": _matrix(model.tok_emb),
        "transformer.wpe.weight": _matrix(model.pos_emb),
        "transformer.ln_f.weight": _matrix_vector(model.ln_f),
        "transformer.ln_f.bias": zeros(d),
        "lm_head.weight": _matrix(model.head),
    }
    for i, block in enumerate(blocks):
        attn, p = block.attn, f"transformer.h.{i}."
        fold = attn.scale * math.sqrt(attn.head_dim)  # GPT-2 scales q.k by 1/sqrt(head_dim)
        q = _matrix(attn.q) if fold == 1.0 else _matrix(attn.q) * fold
        qkv = torch.cat([q, _matrix(attn.k), _matrix(attn.v)])  # (3d, d)
        state.update({
            p + "ln_1.weight": _matrix_vector(block.ln1), p + "ln_1.bias": zeros(d),
            p + "attn.c_attn.weight": qkv.t(), p + "attn.c_attn.bias": zeros(3 * d),  # Conv1D: (in, out)
            p + "attn.c_proj.weight": _matrix(attn.out).t(), p + "attn.c_proj.bias": zeros(d),
            p + "ln_2.weight": _matrix_vector(block.ln2), p + "ln_2.bias": zeros(d),
            p + "mlp.c_fc.weight": _matrix(block.mlp.up).t(), p + "mlp.c_fc.bias": zeros(block.mlp.up.out_features),
            p + "mlp.c_proj.weight": _matrix(block.mlp.down).t(), p + "mlp.c_proj.bias": zeros(d),
        })
    config = {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
        "vocab_size": model.tok_emb.num_embeddings, "n_positions": model.seq_len, "n_embd": d,
        "n_layer": len(blocks), "n_head": heads.pop() if heads else 1, "n_inner": inner.pop() if inner else 4 * d,
        "activation_function": "gelu", "layer_norm_epsilon": eps.pop(),
        "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0, "summary_first_dropout": 0.0,
        "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False,
        "tie_word_embeddings": False, "use_cache": True, "torch_dtype": "float32", "dtype": "float32",
    }
    return config, {k: v.contiguous() for k, v in state.items()}


def _matrix_vector(norm: LayerNorm) -> torch.Tensor:
    with torch.no_grad():
        weight = norm.weight
    return weight[0].detach().float()


def _tokenizer_files(tokenizer, seq_len: int) -> dict[str, str]:
    """tokenizer.json and the config that makes transformers read it as a fast tokenizer; the
    end-of-document token is eos, bos and pad, as stabench's own evaluation uses it."""
    from .data.tokenizer import eos_id

    eos = tokenizer.id_to_token(eos_id(tokenizer))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": seq_len,
              "bos_token": eos, "eos_token": eos, "pad_token": eos, "unk_token": None,
              "add_bos_token": False, "add_eos_token": False, "clean_up_tokenization_spaces": False}
    return {"tokenizer.json": tokenizer.to_str(), "tokenizer_config.json": json.dumps(config, indent=2) + "\n",
            "special_tokens_map.json": json.dumps({"bos_token": eos, "eos_token": eos, "pad_token": eos}, indent=2)
            + "\n"}


def run_data_dir(run_dir: Path) -> Path:
    """results/<bench>/runs/<method>/<size>/<lr-seed> -> results/<bench>/data (the workflow's layout)."""
    results = paths.results_of_run(run_dir)
    if results is None or not (paths.data_dir(results) / "manifest.json").is_file():
        raise ExportError(f"no prepared data folder found for run {str(run_dir)!r} (expected results/<bench>/data): "
                          "give it with --data DIR (the tokenizer is exported with the model)")
    return paths.data_dir(results)


def export_run(run_dir: str | Path, out: str | Path, data_dir: str | Path | None = None) -> dict:
    """Write ``run_dir``'s trained model (and its tokenizer) to ``out`` in Hugging Face format;
    returns the config written. ``data_dir``: the run's prepared data folder (default: found
    from the results layout, as ``stabench eval`` finds it)."""
    from safetensors.torch import save_file

    from .data.tokenizer import eos_id

    run_dir, out = Path(run_dir), Path(out)
    model, metrics = load_run_model(run_dir)
    positions = metrics["config"]["model"].get("positions", "learned")
    if positions != "learned":
        raise ExportError(f"model.positions {positions!r}: only learned positions map onto GPT-2")
    config, state = gpt2_weights(model)
    tokenizer = run_tokenizer(Path(data_dir) if data_dir else run_data_dir(run_dir))
    eos = eos_id(tokenizer)
    config.update(bos_token_id=eos, eos_token_id=eos, pad_token_id=eos)
    out.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out / MODEL_FILE), metadata={"format": "pt"})
    write_json(out / "config.json", config)
    for name, text in _tokenizer_files(tokenizer, config["n_positions"]).items():
        write_text(out / name, text)
    write_json(out / PROVENANCE_FILE, {
        "run_dir": str(run_dir), "method": metrics.get("method"), "size": metrics.get("size"),
        "lr": metrics.get("lr"), "seed": metrics.get("seed"), "identity": metrics.get("identity"),
        "diverged": metrics.get("diverged"), "final_val_loss": metrics.get("final_val_loss"),
        "format": "transformers GPT2LMHeadModel, float32; biases are zero (stabench's GPT has none)",
    })
    return config
