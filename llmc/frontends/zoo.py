"""Architecture-only models: real configurations, generated weights.

Each entry is the model's published ``config.json`` written out (source in the comment above it).
:func:`build` makes its IR graph with every param on the ``meta`` device (shapes and formats, no
data), in about a second whatever the size: the module is built with two layers on the meta
device, exported, and the second layer's subgraph is replicated to the real depth with renamed
scopes and params (:func:`llmc.frontends.canon.replicate_layers`). Cost analysis, roofline,
compilation and FPGA simulation work on such graphs; :func:`materialize` fills the params with
seeded random values where real numbers are needed.

Example::

    g = zoo.build("llama2-7b")                  # f16, 6.74B params on meta (cached on disk)
    analysis.param_summary(g)["parameters"]     # 6738415616
    zoo.materialize(g, seed=0)                  # now runnable (needs the memory)
"""

from __future__ import annotations

import copy
import hashlib
import importlib.metadata
import json
import os
import zlib
from pathlib import Path
from typing import Any

import torch

from llmc.cache import cache_dir
from llmc.errors import ModelLoadError
from llmc.ir.graph import Graph
from llmc.ir.params import Param
from llmc.ir.types import to_torch_dtype

CONFIGS: dict[str, dict[str, Any]] = {
    # https://huggingface.co/meta-llama/Llama-2-7b-hf/blob/main/config.json
    "llama2-7b": {
        "architectures": ["LlamaForCausalLM"],
        "bos_token_id": 1,
        "eos_token_id": 2,
        "hidden_act": "silu",
        "hidden_size": 4096,
        "initializer_range": 0.02,
        "intermediate_size": 11008,
        "max_position_embeddings": 4096,
        "model_type": "llama",
        "num_attention_heads": 32,
        "num_hidden_layers": 32,
        "num_key_value_heads": 32,
        "pretraining_tp": 1,
        "rms_norm_eps": 1e-05,
        "rope_scaling": None,
        "tie_word_embeddings": False,
        "torch_dtype": "float16",
        "use_cache": True,
        "vocab_size": 32000,
    },
    # https://huggingface.co/TinyLlama/TinyLlama-1.1B-Chat-v1.0/blob/main/config.json
    "tinyllama-1.1b": {
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "hidden_act": "silu",
        "hidden_size": 2048,
        "initializer_range": 0.02,
        "intermediate_size": 5632,
        "max_position_embeddings": 2048,
        "model_type": "llama",
        "num_attention_heads": 32,
        "num_hidden_layers": 22,
        "num_key_value_heads": 4,
        "pretraining_tp": 1,
        "rms_norm_eps": 1e-05,
        "rope_scaling": None,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "use_cache": True,
        "vocab_size": 32000,
    },
    # https://huggingface.co/meta-llama/Llama-2-13b-hf/blob/main/config.json
    "llama2-13b": {
        "architectures": ["LlamaForCausalLM"],
        "bos_token_id": 1,
        "eos_token_id": 2,
        "hidden_act": "silu",
        "hidden_size": 5120,
        "initializer_range": 0.02,
        "intermediate_size": 13824,
        "max_position_embeddings": 4096,
        "model_type": "llama",
        "num_attention_heads": 40,
        "num_hidden_layers": 40,
        "num_key_value_heads": 40,
        "pretraining_tp": 1,
        "rms_norm_eps": 1e-05,
        "rope_scaling": None,
        "tie_word_embeddings": False,
        "torch_dtype": "float16",
        "use_cache": True,
        "vocab_size": 32000,
    },
    # https://huggingface.co/meta-llama/Meta-Llama-3-8B/blob/main/config.json
    # (Llama 3, not 3.1: rope_theta 500000 and no rope scaling)
    "llama3-8b": {
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": 128000,
        "eos_token_id": 128001,
        "hidden_act": "silu",
        "hidden_size": 4096,
        "initializer_range": 0.02,
        "intermediate_size": 14336,
        "max_position_embeddings": 8192,
        "model_type": "llama",
        "num_attention_heads": 32,
        "num_hidden_layers": 32,
        "num_key_value_heads": 8,
        "pretraining_tp": 1,
        "rms_norm_eps": 1e-05,
        "rope_scaling": None,
        "rope_theta": 500000.0,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "use_cache": True,
        "vocab_size": 128256,
    },
    # https://huggingface.co/mistralai/Mistral-7B-v0.1/blob/main/config.json
    "mistral-7b": {
        "architectures": ["MistralForCausalLM"],
        "bos_token_id": 1,
        "eos_token_id": 2,
        "hidden_act": "silu",
        "hidden_size": 4096,
        "initializer_range": 0.02,
        "intermediate_size": 14336,
        "max_position_embeddings": 32768,
        "model_type": "mistral",
        "num_attention_heads": 32,
        "num_hidden_layers": 32,
        "num_key_value_heads": 8,
        "rms_norm_eps": 1e-05,
        "rope_theta": 10000.0,
        "sliding_window": 4096,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "use_cache": True,
        "vocab_size": 32000,
    },
    # https://huggingface.co/facebook/opt-6.7b/blob/main/config.json
    "opt-6.7b": {
        "_remove_final_layer_norm": False,
        "activation_dropout": 0.0,
        "activation_function": "relu",
        "architectures": ["OPTForCausalLM"],
        "attention_dropout": 0.0,
        "bos_token_id": 2,
        "do_layer_norm_before": True,
        "dropout": 0.1,
        "eos_token_id": 2,
        "ffn_dim": 16384,
        "hidden_size": 4096,
        "init_std": 0.02,
        "layerdrop": 0.0,
        "max_position_embeddings": 2048,
        "model_type": "opt",
        "num_attention_heads": 32,
        "num_hidden_layers": 32,
        "pad_token_id": 1,
        "prefix": "</s>",
        "torch_dtype": "float16",
        "use_cache": True,
        "vocab_size": 50272,
        "word_embed_proj_dim": 4096,
    },
    # https://huggingface.co/openai-community/gpt2/blob/main/config.json
    "gpt2": {
        "activation_function": "gelu_new",
        "architectures": ["GPT2LMHeadModel"],
        "attn_pdrop": 0.1,
        "bos_token_id": 50256,
        "embd_pdrop": 0.1,
        "eos_token_id": 50256,
        "initializer_range": 0.02,
        "layer_norm_epsilon": 1e-05,
        "model_type": "gpt2",
        "n_ctx": 1024,
        "n_embd": 768,
        "n_head": 12,
        "n_layer": 12,
        "n_positions": 1024,
        "resid_pdrop": 0.1,
        "summary_activation": None,
        "summary_first_dropout": 0.1,
        "summary_proj_to_labels": True,
        "summary_type": "cls_index",
        "summary_use_proj": True,
        "task_specific_params": {"text-generation": {"do_sample": True, "max_length": 50}},
        "vocab_size": 50257,
    },
    # https://huggingface.co/openai-community/gpt2-xl/blob/main/config.json
    "gpt2-xl": {
        "activation_function": "gelu_new",
        "architectures": ["GPT2LMHeadModel"],
        "attn_pdrop": 0.1,
        "bos_token_id": 50256,
        "embd_pdrop": 0.1,
        "eos_token_id": 50256,
        "initializer_range": 0.02,
        "layer_norm_epsilon": 1e-05,
        "model_type": "gpt2",
        "n_ctx": 1024,
        "n_embd": 1600,
        "n_head": 25,
        "n_layer": 48,
        "n_positions": 1024,
        "output_past": True,
        "resid_pdrop": 0.1,
        "summary_activation": None,
        "summary_first_dropout": 0.1,
        "summary_proj_to_labels": True,
        "summary_type": "cls_index",
        "summary_use_proj": True,
        "task_specific_params": {"text-generation": {"do_sample": True, "max_length": 50}},
        "vocab_size": 50257,
    },
    # https://huggingface.co/microsoft/Phi-3-mini-4k-instruct/blob/main/config.json
    # (auto_map and _name_or_path dropped: transformers has the class, llmc runs no remote code)
    "phi-3-mini": {
        "architectures": ["Phi3ForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": 1,
        "embd_pdrop": 0.0,
        "eos_token_id": 32000,
        "hidden_act": "silu",
        "hidden_size": 3072,
        "initializer_range": 0.02,
        "intermediate_size": 8192,
        "max_position_embeddings": 4096,
        "model_type": "phi3",
        "num_attention_heads": 32,
        "num_hidden_layers": 32,
        "num_key_value_heads": 32,
        "original_max_position_embeddings": 4096,
        "pad_token_id": 32000,
        "resid_pdrop": 0.0,
        "rms_norm_eps": 1e-05,
        "rope_scaling": None,
        "rope_theta": 10000.0,
        "sliding_window": 2047,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "use_cache": True,
        "vocab_size": 32064,
    },
    # https://huggingface.co/tiiuae/falcon-7b/blob/main/config.json
    "falcon-7b": {
        "alibi": False,
        "apply_residual_connection_post_layernorm": False,
        "architectures": ["FalconForCausalLM"],
        "attention_dropout": 0.0,
        "bias": False,
        "bos_token_id": 11,
        "eos_token_id": 11,
        "hidden_dropout": 0.0,
        "hidden_size": 4544,
        "initializer_range": 0.02,
        "layer_norm_epsilon": 1e-05,
        "model_type": "falcon",
        "multi_query": True,
        "new_decoder_architecture": False,
        "num_attention_heads": 71,
        "num_hidden_layers": 32,
        "parallel_attn": True,
        "torch_dtype": "bfloat16",
        "use_cache": True,
        "vocab_size": 65024,
    },
    # https://huggingface.co/google/gemma-2-2b/blob/main/config.json
    "gemma-2-2b": {
        "architectures": ["Gemma2ForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "attn_logit_softcapping": 50.0,
        "bos_token_id": 2,
        "cache_implementation": "hybrid",
        "eos_token_id": 1,
        "final_logit_softcapping": 30.0,
        "head_dim": 256,
        "hidden_act": "gelu_pytorch_tanh",
        "hidden_activation": "gelu_pytorch_tanh",
        "hidden_size": 2304,
        "initializer_range": 0.02,
        "intermediate_size": 9216,
        "max_position_embeddings": 8192,
        "model_type": "gemma2",
        "num_attention_heads": 8,
        "num_hidden_layers": 26,
        "num_key_value_heads": 4,
        "pad_token_id": 0,
        "query_pre_attn_scalar": 256,
        "rms_norm_eps": 1e-06,
        "rope_theta": 10000.0,
        "sliding_window": 4096,
        "torch_dtype": "float32",
        "use_cache": True,
        "vocab_size": 256000,
    },
    # https://huggingface.co/google/gemma-3-1b-pt/blob/main/config.json
    "gemma-3-1b": {
        "architectures": ["Gemma3ForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "attn_logit_softcapping": None,
        "bos_token_id": 2,
        "cache_implementation": "hybrid",
        "eos_token_id": 1,
        "final_logit_softcapping": None,
        "head_dim": 256,
        "hidden_activation": "gelu_pytorch_tanh",
        "hidden_size": 1152,
        "initializer_range": 0.02,
        "intermediate_size": 6912,
        "max_position_embeddings": 32768,
        "model_type": "gemma3_text",
        "num_attention_heads": 4,
        "num_hidden_layers": 26,
        "num_key_value_heads": 1,
        "pad_token_id": 0,
        "query_pre_attn_scalar": 256,
        "rms_norm_eps": 1e-06,
        "rope_local_base_freq": 10000,
        "rope_scaling": None,
        "rope_theta": 1000000,
        "sliding_window": 512,
        "sliding_window_pattern": 6,
        "torch_dtype": "bfloat16",
        "use_cache": True,
        "vocab_size": 262144,
    },
    # https://huggingface.co/mistralai/Mixtral-8x7B-v0.1/blob/main/config.json
    "mixtral-8x7b": {
        "architectures": ["MixtralForCausalLM"],
        "attention_dropout": 0.0,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "hidden_act": "silu",
        "hidden_size": 4096,
        "initializer_range": 0.02,
        "intermediate_size": 14336,
        "max_position_embeddings": 32768,
        "model_type": "mixtral",
        "num_attention_heads": 32,
        "num_experts_per_tok": 2,
        "num_hidden_layers": 32,
        "num_key_value_heads": 8,
        "num_local_experts": 8,
        "output_router_logits": False,
        "rms_norm_eps": 1e-05,
        "rope_theta": 1000000.0,
        "router_aux_loss_coef": 0.02,
        "sliding_window": None,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "use_cache": True,
        "vocab_size": 32000,
    },
}

# Published parameter counts (tied embeddings counted once), checked by the tests.
PARAM_COUNTS: dict[str, int] = {
    "llama2-7b": 6_738_415_616,
    "llama2-13b": 13_015_864_320,
    "llama3-8b": 8_030_261_248,
    "mistral-7b": 7_241_732_096,
    "opt-6.7b": 6_658_473_984,
    "gpt2": 124_439_808,
    "gpt2-xl": 1_557_611_200,
    "phi-3-mini": 3_821_079_552,
    "falcon-7b": 6_921_720_704,
    "gemma-2-2b": 2_614_341_888,
    "gemma-3-1b": 999_885_952,
    "tinyllama-1.1b": 1_100_048_384,
    "mixtral-8x7b": 46_702_792_704,
}


def names() -> list[str]:
    """The architecture-only model names."""
    return list(CONFIGS)


def config(name: str) -> dict[str, Any]:
    """A copy of the model's config dict."""
    if name not in CONFIGS:
        import difflib

        close = difflib.get_close_matches(name, CONFIGS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ModelLoadError(f"unknown zoo model {name!r} (known: {', '.join(CONFIGS)}){hint}")
    return copy.deepcopy(CONFIGS[name])


def build(name: str, *, dtype: str | None = None, cache: bool | None = None) -> Graph:
    """The IR graph of a zoo model with ``meta`` params (see the module docstring).

    The graph is kept in the on-disk cache (:func:`cache_path`) keyed by the config, the dtype,
    and the versions of llmc's frontend and IR sources, torch and transformers, so a second build
    skips tracing (seconds for a 7B model, mostly importing transformers) and parses the IR text
    instead (tenths of a second). ``cache=False`` or ``LLMC_CACHE_DIR=off`` turns it off.
    """
    cfg = config(name)
    path = cache_path(name, cfg, dtype) if cache is not False else None
    if path is not None and path.is_file():
        from llmc.ir.parser import parse_graph

        try:
            return parse_graph(path.read_text())
        except Exception:  # noqa: BLE001 - a damaged cache entry is rebuilt, never fatal
            path.unlink(missing_ok=True)
    g = _build(name, cfg, dtype)
    if path is not None:
        _write_cache(path, g)
    return g


def cache_path(name: str, cfg: dict[str, Any], dtype: str | None) -> Path | None:
    """Where :func:`build` caches ``name`` (``None`` when the cache is off)."""
    base = cache_dir()
    if base is None:
        return None
    h = hashlib.sha256()
    h.update(json.dumps([cfg, dtype], sort_keys=True).encode())
    for dist in ("torch", "transformers"):
        try:
            h.update(importlib.metadata.version(dist).encode())
        except importlib.metadata.PackageNotFoundError:
            h.update(b"-")
    here = Path(__file__).resolve().parents[1]
    for src in sorted([*here.glob("frontends/*.py"), *here.glob("ir/*.py")]):
        h.update(src.name.encode())
        h.update(src.read_bytes())
    return base / "zoo" / f"{name}-{h.hexdigest()[:20]}.ir"


def _write_cache(path: Path, g: Graph) -> None:
    from llmc.ir.printer import print_graph

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(print_graph(g))
        tmp.replace(path)
    except OSError:  # a read-only or full disk only costs the next build its speed
        pass


def _build(name: str, cfg: dict[str, Any], dtype: str | None) -> Graph:
    from llmc.frontends.hf import from_hf_model
    from llmc.frontends.hf_dir import architecture_of, build_module, parse_dtype

    where = f"zoo model {name}"
    fam = architecture_of(cfg, where)
    layers_key = "n_layer" if "n_layer" in cfg else "num_hidden_layers"
    layers = int(cfg[layers_key])
    target = parse_dtype(dtype, "dtype") or parse_dtype(cfg.get("torch_dtype"), where) or "f32"
    small = dict(cfg, **{layers_key: min(layers, 2)})
    kinds = _layer_types(cfg, fam, where)
    if kinds is not None:  # build one layer of each type (Gemma: sliding and full attention)
        first = kinds[0]
        other = next((k for k in kinds if k != first), first)
        small["layer_types"] = [first, other][: min(layers, 2)]
    model = build_module(small, fam, where, device="meta").to(to_torch_dtype(target))
    g = from_hf_model(model, name=name, num_layers=layers, layer_types=kinds)
    g.meta["zoo"] = name
    g.meta["architecture_only"] = True
    return g


def _layer_types(cfg: dict[str, Any], fam: Any, where: str) -> list[str] | None:
    """The per-layer attention types transformers derives from the config (Gemma's
    alternation, ``sliding_window_pattern``), or None for families without them."""
    if fam.name not in ("gemma2", "gemma3"):
        return None
    import transformers

    arch = next(a for a in cfg["architectures"] if hasattr(transformers, a))
    conf = {k: v for k, v in cfg.items() if k != "architectures"}
    lt = getattr(transformers, arch).config_class.from_dict(conf).layer_types
    return [str(t) for t in lt] if lt else None


def _seed_for(name: str, seed: int) -> int:
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % (2**63)


def materialize(graph: Graph, seed: int = 0, std: float = 0.02) -> Graph:
    """Fill every ``meta`` param with seeded values, in place (and return the graph).

    Matrices and embeddings get ``N(0, std)``; 1-D weights read by a norm get ones, other 1-D
    params (biases) zeros. Each param's values depend only on ``seed`` and its name.

    Inside :func:`llmc.safetensors_io.spilling` (a compile), each matrix is generated alone and
    moved into an unlinked temporary file (:func:`llmc.safetensors_io.keep`): the values are
    the same bits, but they live in the page cache (reclaimable) instead of anonymous memory,
    and each file's pages and disk space go with its param, so a model larger than RAM
    compiles (``llmc compile --random-weights``; ``$TMPDIR`` needs the model's bytes free).
    """
    norm_weights = set()
    users = graph.users()
    for n in graph.nodes:
        if n.op == "param" and any(
            u.op in ("rms_norm", "layer_norm") and u.inputs[1:2] == (n.out,)
            for u in users.get(n.out, [])
        ):
            norm_weights.add(n.attrs.name)
    from llmc.safetensors_io import keep

    for pname, p in list(graph.params.items()):
        if not p.is_meta:
            continue
        if not p.format.is_dense:
            raise ModelLoadError(f"param @{pname}: cannot materialize a non-dense meta param")
        shape = tuple(int(d) for d in p.type.shape)
        dt = to_torch_dtype(p.type.dtype)
        if len(shape) == 1:
            value = (
                torch.ones(shape, dtype=dt)
                if pname in norm_weights
                else torch.zeros(shape, dtype=dt)
            )
        else:
            gen = torch.Generator().manual_seed(_seed_for(pname, seed))
            # in place: no second full-size temporary (the values are the same bits)
            value = torch.randn(shape, generator=gen).mul_(std).to(dt)
            value = keep(value)
        graph.params[pname] = Param(pname, p.type, p.format, {"value": value})
    return graph
