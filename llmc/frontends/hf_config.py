"""Checking a Hugging Face ``config.json`` before anything is built from it.

A config is untrusted input (design.md, "Inputs are untrusted"): ``num_hidden_layers: 1000000``
would make transformers build a million layers (even on the ``meta`` device that takes minutes and
gigabytes), and a string where a number belongs surfaces as a traceback deep in tracing. So,
before :func:`llmc.frontends.hf_dir.build_module`:

1. :func:`check_values` — every size is a positive integer (not a bool, not a float) below an
   absolute limit far above any real model; epsilons, rope parameters and flags have their types;
   heads divide the hidden size, key/value heads divide the heads.
2. :func:`check_against_tensors` — the sizes agree with the checkpoint's tensors: the layer count
   is the number of layers present (indices ``0..N-1``), the vocabulary and hidden sizes are the
   token embedding's shape.

After the build, every tensor shape the module implies is compared with the checkpoint
(``hf_dir._check``), which bounds the remaining sizes (intermediate size, head counts, positions).
Each failure is one :class:`~llmc.errors.ModelLoadError` naming ``config.json`` and the field.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from llmc.errors import ModelLoadError
from llmc.frontends.families import _EXPLICIT_HEAD_DIM as EXPLICIT_HEAD_DIM
from llmc.frontends.families import LAYER_TYPES, SUPPORTED_ROPE, Family
from llmc.frontends.untrusted import quote

# (json keys, the first being the name used in messages; upper limit; may be null)
_SIZES: tuple[tuple[tuple[str, ...], int, bool], ...] = (
    (("num_hidden_layers", "n_layer"), 1 << 12, False),
    (("hidden_size", "n_embd"), 1 << 17, False),
    (("intermediate_size", "ffn_dim"), 1 << 20, False),
    (("n_inner",), 1 << 20, True),
    (("num_attention_heads", "n_head"), 1 << 12, False),
    (("num_key_value_heads",), 1 << 12, True),
    (("num_kv_heads",), 1 << 12, True),  # Falcon's spelling
    (("ffn_hidden_size",), 1 << 20, True),
    (("query_pre_attn_scalar",), 1 << 17, True),
    (("sliding_window_pattern",), 1 << 12, True),
    (("num_local_experts", "num_experts"), 1 << 12, True),
    (("num_experts_per_tok",), 1 << 12, True),
    (("moe_intermediate_size",), 1 << 20, True),
    (("shared_expert_intermediate_size",), 1 << 20, True),
    (("head_dim",), 1 << 12, True),
    (("vocab_size",), 1 << 23, False),
    (("max_position_embeddings", "n_positions", "n_ctx"), 1 << 24, False),
    (("word_embed_proj_dim",), 1 << 17, True),
    (("sliding_window",), 1 << 24, True),  # 0 (no window) is allowed below
)
_EPS = ("rms_norm_eps", "layer_norm_eps", "layer_norm_epsilon")
_POSITIVE = (
    "rope_theta",
    "rotary_emb_base",
    "initializer_range",
    "rope_local_base_freq",
    "attn_logit_softcapping",
    "final_logit_softcapping",
)
_FRACTIONS = ("partial_rotary_factor", "rotary_pct")
_FLAGS = (
    "tie_word_embeddings",
    "use_parallel_residual",
    "do_layer_norm_before",
    "use_sliding_window",
    "scale_attn_weights",
    "scale_attn_by_inverse_layer_idx",
    "reorder_and_upcast_attn",
    "attention_bias",
    "mlp_bias",
    "enable_bias",
    "use_cache",
    "_remove_final_layer_norm",
    "parallel_attn",
    "multi_query",
    "new_decoder_architecture",
    "alibi",
    "bias",
    "use_bidirectional_attention",
    "norm_topk_prob",
    "output_router_logits",
)
_STRINGS = ("hidden_act", "activation_function", "model_type", "hidden_activation", "activation")
_TOKEN_IDS = ("bos_token_id", "eos_token_id", "pad_token_id")
_ROPE_DICTS = ("rope_scaling", "rope_parameters")
_ROPE_NUMBERS = ("factor", "low_freq_factor", "high_freq_factor", "rope_theta")

# The token embedding, relative to the base model, per family.
_EMBEDDING = {
    "llama": "embed_tokens.weight",
    "mistral": "embed_tokens.weight",
    "qwen2": "embed_tokens.weight",
    "opt": "decoder.embed_tokens.weight",
    "gpt2": "wte.weight",
    "gpt_neox": "embed_in.weight",
    "phi3": "embed_tokens.weight",
    "falcon": "word_embeddings.weight",
    "gemma2": "embed_tokens.weight",
    "gemma3": "embed_tokens.weight",
    "mixtral": "embed_tokens.weight",
    "qwen2_moe": "embed_tokens.weight",
}


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _show(v: Any) -> str:
    """A config value as JSON spells it (null, true, "2"), shortened."""
    try:
        s = json.dumps(v)
    except (TypeError, ValueError):
        s = repr(v)
    return s if len(s) <= 40 else s[:37] + "..."


def _key(cfg: dict[str, Any], keys: tuple[str, ...]) -> str | None:
    return next((k for k in keys if k in cfg), None)


def check_values(cfg: dict[str, Any], where: str, fam: Family | None = None) -> None:
    """Types and ranges of every field llmc or transformers reads as a size, number or flag (and,
    given the family, the rotary dimensions they imply)."""

    def bad(k: str, v: Any, want: str) -> ModelLoadError:
        return ModelLoadError(f"{where}: {k} is {_show(v)}; expected {want}")

    q = cfg.get("quantization_config")
    if q is not None:
        method = q.get("quant_method", "?") if isinstance(q, dict) else q
        raise ModelLoadError(
            f"{where}: quantization_config (quant_method {_show(method)}): pre-quantized "
            "checkpoints are not supported; load the unquantized checkpoint and quantize with "
            "llmc's passes (e.g. --passes rtn:bits=4 or --passes gptq)"
        )
    for keys, limit, nullable in _SIZES:
        for k in keys:
            if k not in cfg:
                continue
            v = cfg[k]
            if (v is None and nullable) or (k == "sliding_window" and v == 0):
                continue
            if not _is_int(v) or v < 1:
                raise bad(k, v, "a positive integer")
            if v > limit:
                raise bad(k, v, f"at most {limit} (no real model is this large)")
    for k in _EPS:
        if k in cfg and not (_is_number(cfg[k]) and 0 < cfg[k] < 1):
            raise bad(k, cfg[k], "a number between 0 and 1")
    for k in _POSITIVE:
        if k in cfg and cfg[k] is not None and not (_is_number(cfg[k]) and cfg[k] > 0):
            raise bad(k, cfg[k], "a positive number")
    for k, v in cfg.items():  # dropout probabilities (not applied at inference, but validated)
        if (k.endswith(("dropout", "_pdrop")) or k == "layerdrop") and v is not None:
            if not (_is_number(v) and 0 <= v <= 1):
                raise bad(k, v, "a probability between 0 and 1")
    for k in _FRACTIONS:
        if k in cfg and cfg[k] is not None and not (_is_number(cfg[k]) and 0 < cfg[k] <= 1):
            raise bad(k, cfg[k], "a number in (0, 1]")
    for k in _FLAGS:
        if k in cfg and cfg[k] is not None and not isinstance(cfg[k], bool):
            raise bad(k, cfg[k], "true or false")
    for k in _STRINGS:
        if k in cfg and cfg[k] is not None and not isinstance(cfg[k], str):
            raise bad(k, cfg[k], "a string")
    for k in ("hidden_act", "activation_function", "hidden_activation", "activation"):
        if isinstance(cfg.get(k), str):
            from transformers.activations import ACT2FN

            if cfg[k] not in ACT2FN:
                raise bad(k, cfg[k], "an activation transformers knows (silu, gelu_new, relu, ...)")
    for k in _TOKEN_IDS:
        v = cfg.get(k)
        ids = v if isinstance(v, list) else [v]
        low = -1 if k == "pad_token_id" else 0  # old Llama conversions say pad_token_id: -1
        if k in cfg and v is not None and not all(_is_int(i) and i >= low for i in ids):
            raise bad(k, v, "a token id (a non-negative integer), a list of them, or null")
        vocab = cfg.get("vocab_size")
        if v is not None and _is_int(vocab) and any(i >= vocab for i in ids):
            raise bad(k, v, f"a token id below vocab_size {vocab}")
    for k in _ROPE_DICTS:
        _check_rope(cfg, k, where, bad)
    _check_heads(cfg, where)
    ne = cfg.get("num_local_experts", cfg.get("num_experts"))
    k = cfg.get("num_experts_per_tok")
    if _is_int(ne) and _is_int(k) and k > ne:
        raise bad("num_experts_per_tok", k, f"at most the number of experts ({ne})")
    if fam is not None and fam.rotary:
        _check_rotary_dims(cfg, fam, where)
    if fam is not None:
        _check_layer_types(cfg, fam, where)


def _check_rope(cfg: dict[str, Any], k: str, where: str, bad: Any) -> None:
    rp = cfg.get(k)
    if rp is None:
        return
    if not isinstance(rp, dict):
        raise bad(k, rp, "an object or null")
    if rp and set(rp) <= set(LAYER_TYPES):  # Gemma 3: one set per layer type
        for lt, sub in rp.items():
            _check_rope({f"{k}.{lt}": sub}, f"{k}.{lt}", where, bad)
        return
    for f in ("rope_type", "type"):
        if f in rp and (not isinstance(rp[f], str) or rp[f] not in SUPPORTED_ROPE):
            raise bad(
                f"{k}.{f}", rp[f], f"one of {', '.join(SUPPORTED_ROPE)} (the rope llmc implements)"
            )
    for f in _ROPE_NUMBERS:
        if f in rp and rp[f] is not None and not (_is_number(rp[f]) and rp[f] > 0):
            raise bad(f"{k}.{f}", rp[f], "a positive number")
    if "partial_rotary_factor" in rp and not (
        _is_number(rp["partial_rotary_factor"]) and 0 < rp["partial_rotary_factor"] <= 1
    ):
        raise bad(f"{k}.partial_rotary_factor", rp["partial_rotary_factor"], "a number in (0, 1]")
    scaled = rp.get("rope_type", rp.get("type")) in ("linear", "llama3")
    if scaled and _is_number(rp.get("factor")) and rp["factor"] < 1:
        raise bad(f"{k}.factor", rp["factor"], "at least 1 (a context-extension factor)")
    lo, hi = rp.get("low_freq_factor"), rp.get("high_freq_factor")
    if scaled and _is_number(lo) and _is_number(hi) and hi <= lo:
        raise bad(f"{k}.high_freq_factor", hi, f"more than low_freq_factor {lo}")
    f = "original_max_position_embeddings"
    if f in rp and rp[f] is not None and not (_is_int(rp[f]) and 0 < rp[f] <= 1 << 24):
        raise bad(f"{k}.{f}", rp[f], "a positive integer")


def _check_heads(cfg: dict[str, Any], where: str) -> None:
    hk = _key(cfg, ("hidden_size", "n_embd"))
    nk = _key(cfg, ("num_attention_heads", "n_head"))
    if hk is None or nk is None:
        return
    hidden, heads = cfg[hk], cfg[nk]
    if hidden % heads:  # transformers requires it even with an explicit head_dim
        raise ModelLoadError(
            f"{where}: {hk} {hidden} is not divisible by {nk} {heads} (each head gets "
            f"{hk} / {nk} channels)"
        )
    for kk in ("num_key_value_heads", "num_kv_heads"):
        kv = cfg.get(kk)
        if kv is not None and (kv > heads or heads % kv):
            raise ModelLoadError(
                f"{where}: {kk} {kv} must divide {nk} {heads} (grouped-query attention)"
            )


def _check_layer_types(cfg: dict[str, Any], fam: Family, where: str) -> None:
    """``layer_types`` (per-layer full or sliding attention) as transformers can run it."""
    lt = cfg.get("layer_types")
    if lt is None:
        return
    kinds = ("full_attention", "sliding_attention")
    if not isinstance(lt, list) or not all(isinstance(t, str) and t in kinds for t in lt):
        raise ModelLoadError(
            f"{where}: layer_types must be a list of {' or '.join(map(repr, kinds))}"
        )
    n = cfg.get("num_hidden_layers")
    if _is_int(n) and len(lt) != n:
        raise ModelLoadError(
            f"{where}: layer_types lists {len(lt)} layers but num_hidden_layers is {n}"
        )
    if fam.name == "mistral" and "sliding_attention" in lt and "full_attention" in lt:
        # transformers' Mistral masks every layer with the window but warns that layer_types
        # belongs to Ministral: the two disagree, so neither answer is safe to compile.
        raise ModelLoadError(
            f"{where}: layer_types mixes full and sliding attention, which Mistral does not "
            "support (a Ministral config?)"
        )
    if "sliding_attention" in lt and fam.name in ("mistral", "qwen2", "gemma2", "gemma3"):
        sw = cfg.get("sliding_window")
        off = fam.name == "qwen2" and not cfg.get("use_sliding_window", False)
        if not sw or off:
            why = "use_sliding_window is false" if off else "sliding_window is not set"
            raise ModelLoadError(f"{where}: layer_types has sliding_attention layers but {why}")


def _check_rotary_dims(cfg: dict[str, Any], fam: Family, where: str) -> None:
    """head_dim x partial rotary factor must leave a positive even number of rotated channels
    (transformers truncates it with int(): a factor of 0.01 would rotate nothing)."""
    hk, nk = _key(cfg, ("hidden_size",)), _key(cfg, ("num_attention_heads",))
    if hk is None or nk is None:
        return
    hd = cfg.get("head_dim") if fam.model_type in EXPLICIT_HEAD_DIM else None
    hd = hd or cfg[hk] // cfg[nk]
    rp = cfg.get("rope_parameters") if isinstance(cfg.get("rope_parameters"), dict) else {}
    for key, val in (
        ("rope_parameters.partial_rotary_factor", rp.get("partial_rotary_factor")),
        ("partial_rotary_factor", cfg.get("partial_rotary_factor")),
        ("rotary_pct", cfg.get("rotary_pct")),
    ):
        if val is not None:
            rd = int(hd * val)
            if rd < 2 or rd % 2:
                raise ModelLoadError(
                    f"{where}: {key} {val} rotates {rd} of head_dim {hd} channels; it must be a "
                    "positive even number"
                )
            return


def _effective(cfg: dict[str, Any], keys: tuple[str, ...], arch: str) -> tuple[str, Any]:
    """The json key (the first alias when absent) and its value, or transformers' default."""
    k = _key(cfg, keys)
    if k is not None:
        return k, cfg[k]
    import transformers

    default = getattr(getattr(transformers, arch).config_class(), keys[0], None)
    return keys[0], default


def layer_indices(names: list[str], fam: Family) -> dict[int, str]:
    """Layer index -> one tensor name under the family's decoder layer list."""
    base, _, rel = fam.layers.partition(".")
    pat = re.compile(rf"^(?:{re.escape(base)}\.)?{re.escape(rel)}\.(\d{{1,9}})\.")
    out: dict[int, str] = {}
    for n in names:
        m = n
        for old, new in fam.renames:
            if m.startswith(old):
                m = new + m[len(old) :]
        hit = pat.match(m)
        if hit:
            out.setdefault(int(hit.group(1)), n)
    return out


def check_against_tensors(
    cfg: dict[str, Any],
    fam: Family,
    arch: str,
    shapes: dict[str, tuple[tuple[int, ...], str]],
    where: str,
) -> None:
    """The layer count, vocabulary and hidden size against the checkpoint's tensors."""
    k, n_layers = _effective(cfg, ("num_hidden_layers", "n_layer"), arch)
    found = layer_indices(list(shapes), fam)
    if not found:
        raise ModelLoadError(
            f"{where}: {k} is {n_layers} but the checkpoint holds no {fam.layers}.N tensors"
        )
    count = max(found) + 1
    missing = sorted(set(range(count)) - set(found))
    if missing:
        i = max(found)
        raise ModelLoadError(
            f"{Path(where).parent / shapes[found[i]][1]}: has layer {i} ({quote(found[i])}) but no "
            f"layer {missing[0]}: layers must be numbered 0..N-1"
        )
    if n_layers != count:
        raise ModelLoadError(
            f"{where}: {k} is {n_layers} but the checkpoint holds {count} layers "
            f"({fam.layers}.0 .. {fam.layers}.{count - 1})"
        )
    base = fam.layers.partition(".")[0]
    rel = _EMBEDDING.get(fam.name)
    emb = next((n for n in (f"{base}.{rel}", rel) if rel and n in shapes), None)
    if emb is None:
        return  # reported as a missing tensor once the module's names are known
    shape, file = shapes[emb]
    vk, vocab = _effective(cfg, ("vocab_size",), arch)
    dims: tuple[str, ...] = ("word_embed_proj_dim",) if fam.name == "opt" else ()
    hk, hidden = _effective(cfg, ("hidden_size", "n_embd"), arch)
    if dims and cfg.get(dims[0]) is not None:
        hk, hidden = dims[0], cfg[dims[0]]
    if len(shape) != 2:
        raise ModelLoadError(
            f"{where}: the token embedding {quote(emb)} in {file} has shape {list(shape)}, not "
            f"[{vk}, {hk}]"
        )
    for key, val, got in ((vk, vocab, shape[0]), (hk, hidden, shape[1])):
        if val != got:
            raise ModelLoadError(
                f"{where}: {key} is {val} but the token embedding {quote(emb)} in {file} has shape "
                f"{list(shape)} ({key} {got})"
            )


def field_with(cfg: dict[str, Any], value: int) -> str | None:
    """The one size field of ``cfg`` equal to ``value``, if exactly one is (to name the field
    behind a shape mismatch; None when ambiguous)."""
    keys = [k for keys, _l, _n in _SIZES for k in keys if cfg.get(k) == value]
    return keys[0] if len(keys) == 1 else None
