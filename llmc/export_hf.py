"""Export a (compressed) graph as a Hugging Face model directory that ``transformers`` loads.

Layout written (atomically: a temporary sibling directory renamed into place)::

    OUT/config.json               the model config (FFN width and ``mlp_bias`` updated after
                                  structured pruning); no ``quantization_config`` key, so any
                                  transformers version loads the weights as plain tensors
    OUT/model.safetensors         every weight as a dense tensor in the model's dtype: pruned
                                  weights hold their zeros, quantized weights their dequantized
                                  values ``(q - zero) * scale`` — exactly what llmc computes
    OUT/llmc_quantized.safetensors  the integer form of quantized weights: ``NAME.qweight`` (int8
                                  codes, one per element), ``NAME.scale`` ([out, groups] float32),
                                  ``NAME.zero`` (asymmetric only)
    OUT/llmc_compression.json     the compression config (schema ``llmc-compression-v1``): per
                                  weight its quantization (bits, group, symmetric, method) and
                                  sparsity (unstructured density or N:M), which linears quantize
                                  activations (W8A8: int8, per token, dynamic, symmetric, or a
                                  static per-tensor scale), and the pipeline that produced it
    OUT/tokenizer.json            when the model has a tokenizer, in the Hugging Face format
    OUT/tokenizer_config.json     (``AutoTokenizer.from_pretrained(OUT)`` loads it): the model's own
                                  HF tokenizer as loaded (HF directory, or rebuilt from a GGUF
                                  file's vocabulary), or for llmc's byte tokenizer (``tiny``) a
                                  byte-level BPE with no merges whose id ``i`` is byte ``i``

What transformers runs from this directory is the dense-float equivalent of the compressed model:
identical for pruning, weight-only quantization, SmoothQuant smoothing and structured pruning; for
W8A8 the activation rounding is not applied (the config says where it belongs).

Supported: every family the frontend reads (:data:`llmc.frontends.families.FAMILIES`: Llama,
Mistral, Qwen2, OPT, GPT-2, GPT-NeoX, Phi-3, Falcon, Gemma 2/3, Mixtral, Qwen2-MoE) given the
model's Hugging Face config (``config``: the loaded ``config.json``, a GGUF file's equivalent, or
a compiled artifact's manifest ``hf_config``); without one the config is rebuilt from the graph's metadata for the Llama family only.
Weights keep the family's module names (the frontend's parameter names are the checkpoint's);
GPT-2's Conv1D weights, which the IR holds as ``[out, in]``, are written back as ``[in, out]``.
Before anything is written, every tensor is checked against the ``transformers`` module that the
config builds (on the meta device): a name or shape it does not have (e.g. structured pruning of
a family whose config cannot say so) is refused in one line naming the weight.

The pipeline recorded is ``pipeline`` when given, else the passes that produced the graph
(``graph.pipeline``, appended by :class:`llmc.passes.PassManager`). Example::

    export_hf(graph, Path("out/tiny-2of4"), tokenizer=tok, config=loaded.config)
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from llmc.errors import LlmcError
from llmc.ir.graph import Graph
from llmc.tokenizer import ByteTokenizer

SCHEMA = "llmc-compression-v1"
_LLAMA_LIKE = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
}


class ExportError(LlmcError):
    """The graph cannot be written as a Hugging Face directory (the message says why)."""


def _family(graph: Graph, has_config: bool) -> Any:
    from llmc.frontends.families import FAMILIES

    family = str(graph.meta.get("family", ""))
    if not has_config and family not in _LLAMA_LIKE:
        raise ExportError(
            f"export to Hugging Face without the model's config supports Llama-family graphs "
            f"({', '.join(_LLAMA_LIKE)}); graph @{graph.name} is family {family!r} (export from "
            "the model directory, which has its config.json)"
        )
    if family not in FAMILIES:
        raise ExportError(
            f"export to Hugging Face: family {family!r} of graph @{graph.name} is not supported "
            f"(supported: {', '.join(FAMILIES)})"
        )
    return FAMILIES[family]


def _config_from_meta(graph: Graph) -> dict[str, Any]:
    m = graph.meta
    family = str(m.get("family", ""))
    eps = next((float(n.attrs.eps) for n in graph.nodes if n.op == "rms_norm"), 1e-6)
    rope = m.get("rope") or {}
    scaling = rope.get("scaling", "none") or "none"
    if scaling not in ("none", ""):
        raise ExportError(f"export: rope scaling {scaling!r} is not supported yet")
    theta = float(rope.get("theta", 10000.0))
    return {
        "architectures": [m.get("architecture") or _LLAMA_LIKE[family]],
        "model_type": family,
        "hidden_size": int(m["hidden_size"]),
        "intermediate_size": int(m["intermediate_size"]),
        "num_hidden_layers": int(m["num_layers"]),
        "num_attention_heads": int(m["num_heads"]),
        "num_key_value_heads": int(m["num_kv_heads"]),
        "head_dim": int(m["head_dim"]),
        "vocab_size": int(m["vocab_size"]),
        "max_position_embeddings": int(m.get("max_position_embeddings", 2048)),
        "rms_norm_eps": eps,
        "rope_theta": theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": theta},
        "tie_word_embeddings": bool(m.get("tie_word_embeddings", False)),
        "hidden_act": str(m.get("activation", "silu")),
        "attention_bias": False,
        "mlp_bias": False,
        "torch_dtype": {"f32": "float32", "f16": "float16", "bf16": "bfloat16"}.get(
            str(m.get("param_dtype", m.get("dtype", "f32"))), "float32"
        ),
    }


def _ffn_widths(graph: Graph, n_layers: int, prefix: str) -> set[int]:
    out = set()
    for i in range(n_layers):
        p = graph.params.get(f"{prefix}.{i}.mlp.down_proj.weight")
        if p is not None:
            out.add(int(p.type.shape[1]))
    return out


@dataclass
class HFTensors:
    """What a Hugging Face directory holds, before anything is written: the config, every tensor
    by checkpoint name (dense, in the model's dtype), the integer form of quantized weights, and
    per weight its quantization/sparsity (``weights``) and W8A8 activation scheme
    (``activations``). :func:`export_hf` writes it as is; other exports (compressed-tensors)
    replace quantized tensors by their own encoding."""

    cfg: dict[str, Any]
    tensors: dict[str, torch.Tensor]
    quantized: dict[str, torch.Tensor]
    weights: dict[str, Any]
    activations: dict[str, Any]
    pipeline: str
    transposed: set[str]

    def compression(self, notes: str) -> dict[str, Any]:
        """The ``llmc_compression.json`` record (schema ``llmc-compression-v1``)."""
        return {
            "schema": SCHEMA,
            "producer": "llmc",
            "pipeline": self.pipeline,
            "weights": self.weights,
            "input_activations": self.activations,
            "notes": notes,
        }


def pipeline_fields(
    graph: Graph, recorded: str, recipe: dict[str, Any] | None = None
) -> dict[str, Any]:
    """What a recipe adds to a ``llmc_compression.json`` record (the pipeline is then
    ``recipe:FILE``): ``passes``, the passes the graph went through with their options, and
    ``recipe``, the recipe's ``file``, ``sha256`` and ``text``. Nothing for a spec pipeline."""
    out: dict[str, Any] = {}
    if graph.pipeline and graph.pipeline != recorded:
        out["passes"] = graph.pipeline
    if recipe:
        out["recipe"] = dict(recipe)
    return out


def check_out_dir(out: Path, overwrite: bool) -> None:
    """Refuse an ``out`` that exists and is not an empty directory (unless ``overwrite``)."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise ExportError(
            f"{out}: exists and is not an empty directory; remove it or choose another"
        )


def write_dir(out: Path, fill: Callable[[Path], None]) -> None:
    """Atomically create directory ``out``: ``fill`` writes into a temporary sibling that is
    renamed into place; nothing is left behind when it raises."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        fill(tmp)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save_tokenizer_hf(tokenizer: Any, tmp: Path) -> None:
    """Write the tokenizer files ``AutoTokenizer.from_pretrained`` loads (see the module doc)."""
    if isinstance(tokenizer, ByteTokenizer):
        tokenizer.save_hf(tmp)
    elif tokenizer is not None and hasattr(tokenizer, "save"):
        tokenizer.save(tmp)


def collect_hf(
    graph: Graph, config: dict[str, Any] | None = None, pipeline: str | None = None
) -> HFTensors:
    """The config and tensors of ``graph`` as a Hugging Face checkpoint, checked against the
    ``transformers`` module the config builds (see the module docstring)."""
    if any(p.is_meta for p in graph.params.values()):
        raise ExportError(
            f"graph @{graph.name} has no weight data (architecture-only model): nothing to export"
        )
    fam = _family(graph, bool(config))
    cfg = dict(config) if config else _config_from_meta(graph)
    cfg.pop("quantization_config", None)
    if not cfg.get("architectures"):
        cfg["architectures"] = [fam.architectures[0]]
    if pipeline is None:
        pipeline = graph.pipeline
    transposed = set(graph.meta.get("transposed_params", ()))
    n_layers = int(cfg.get("num_hidden_layers", graph.meta.get("num_layers", 0)))
    prefix = str(graph.meta.get("layer_prefix", "model.layers"))
    widths = _ffn_widths(graph, n_layers, prefix) if fam.name in _LLAMA_LIKE else set()
    if len(widths) > 1:
        raise ExportError(
            f"FFN widths differ between layers ({sorted(widths)}); a Hugging Face config has one "
            "intermediate_size: prune with the same ratio in every layer"
        )
    if widths:
        cfg["intermediate_size"] = widths.pop()
    tensors: dict[str, torch.Tensor] = {}
    quantized: dict[str, torch.Tensor] = {}
    weights: dict[str, Any] = {}
    for name, p in graph.params.items():
        value = p.value()
        tensors[name] = (value.t() if name in transposed else value).contiguous().clone()
        entry: dict[str, Any] = {}
        if name in transposed:
            entry["layout"] = "codes and scales are [out, in]: model.safetensors holds [in, out]"
        q, s = p.format.quant, p.format.sparsity
        if q is not None:
            entry["quant"] = {
                "bits": q.bits,
                "group": q.group,
                "symmetric": q.symmetric,
                "method": q.method,
                "dequantized": "(qweight - zero) * scale, per group of `group` inputs",
            }
            if q.act_bits:
                entry["quant"]["act_bits"] = q.act_bits
                entry["quant"]["act_group"] = q.act_group
            quantized[f"{name}.qweight"] = p.data["qvalue"].contiguous()
            quantized[f"{name}.scale"] = p.data["scale"].contiguous()
            if "zero" in p.data:
                quantized[f"{name}.zero"] = p.data["zero"].contiguous()
        if s is not None:
            entry["sparsity"] = (
                {"pattern": f"{s.n}:{s.m}", "density": s.density}
                if s.kind == "nm"
                else {"pattern": "unstructured", "density": s.density}
            )
        if entry:
            weights[name] = entry
    # biases added by structured pruning: HF's mlp_bias gives every MLP linear a bias
    if any(k.endswith("mlp.down_proj.bias") for k in tensors):
        cfg["mlp_bias"] = True
        for i in range(n_layers):
            for proj in ("gate_proj", "up_proj", "down_proj"):
                w = tensors.get(f"{prefix}.{i}.mlp.{proj}.weight")
                bname = f"{prefix}.{i}.mlp.{proj}.bias"
                if w is not None and bname not in tensors:
                    tensors[bname] = torch.zeros(w.shape[0], dtype=w.dtype)
    dtypes = {
        str(t.dtype).removeprefix("torch.") for t in tensors.values() if t.is_floating_point()
    }
    if len(dtypes) == 1:
        cfg["dtype" if "dtype" in cfg or "torch_dtype" not in cfg else "torch_dtype"] = dtypes.pop()
    _match_module(graph, cfg, fam, tensors)
    activations = {}
    for name, p in graph.params.items():
        q = p.format.quant
        if q is not None and q.act_bits:  # QuantSpec.act_bits: the input of its linear
            activations[name] = {
                "bits": q.act_bits,
                "symmetric": True,
                "granularity": f"per-group of {q.act_group}" if q.act_group else "per-token",
                "dynamic": True,
            }
    for n in graph.nodes:
        if n.op == "qlinear_a8":
            activations[n.attrs.weight] = (
                {
                    "bits": 8,
                    "symmetric": True,
                    "granularity": "per-tensor",
                    "dynamic": False,
                    "scale": n.attrs.act_scale,
                }
                if n.attrs.act_scale > 0
                else {"bits": 8, "symmetric": True, "granularity": "per-token", "dynamic": True}
            )
    return HFTensors(cfg, tensors, quantized, weights, activations, pipeline, transposed)


def export_hf(
    graph: Graph,
    out_dir: Path | str,
    *,
    tokenizer: Any = None,
    config: dict[str, Any] | None = None,
    pipeline: str | None = None,
    recipe: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write ``graph`` to ``out_dir`` (see the module docstring); returns a summary dict.
    ``recipe`` (``{"file", "sha256", "text"}``) is recorded beside a ``recipe:FILE``
    ``pipeline`` (:func:`pipeline_fields`)."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    check_out_dir(out, overwrite)
    hf = collect_hf(graph, config, pipeline)
    cfg, weights = hf.cfg, hf.weights
    compression = hf.compression(
        "model.safetensors holds dense (dequantized, pruned) weights that transformers loads "
        "as is; llmc_quantized.safetensors holds the integer codes. input_activations lists "
        "the linears whose inputs a W8A8 runtime quantizes (not applied by transformers)."
    )
    compression.update(pipeline_fields(graph, hf.pipeline, recipe))

    def fill(tmp: Path) -> None:
        save_file(hf.tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        if hf.quantized:
            save_file(
                hf.quantized, str(tmp / "llmc_quantized.safetensors"), metadata={"format": "pt"}
            )
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        (tmp / "llmc_compression.json").write_text(json.dumps(compression, indent=2) + "\n")
        save_tokenizer_hf(tokenizer, tmp)

    write_dir(out, fill)
    return {
        "out": str(out),
        "tensors": len(hf.tensors),
        "quantized_weights": sum(1 for w in weights.values() if "quant" in w),
        "sparse_weights": sum(1 for w in weights.values() if "sparsity" in w),
        "intermediate_size": cfg.get("intermediate_size"),
        "architecture": cfg["architectures"][0],
        "pipeline": hf.pipeline,
    }


def _match_module(
    graph: Graph, cfg: dict[str, Any], fam: Any, tensors: dict[str, torch.Tensor]
) -> None:
    """Check ``tensors`` against the module ``cfg`` builds (meta device); drop a head that the
    config ties to the embedding when it equals it, untie the config when it does not."""
    from llmc.frontends.hf_dir import build_module

    model = build_module(cfg, fam, f"export of @{graph.name}")
    arch = type(model).__name__
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    emb = model.get_input_embeddings()
    head = model.get_output_embeddings()
    tied = emb is not None and head is not None and head.weight is emb.weight
    names = {id(p): n for n, p in model.named_parameters()}
    if tied:
        emb_name = names[id(emb.weight)]
        head_name = next(
            n
            for n, p in model.named_parameters(remove_duplicate=False)
            if p is emb.weight and n != emb_name
        )
        if head_name in tensors:
            if torch.equal(tensors[head_name], tensors[emb_name]):
                del tensors[head_name]
            else:
                cfg["tie_word_embeddings"] = False
                for sub in ("text_config",):
                    if isinstance(cfg.get(sub), dict):
                        cfg[sub]["tie_word_embeddings"] = False
        else:
            expected.pop(head_name, None)
    for name, t in tensors.items():
        if name not in expected:
            raise ExportError(
                f"export: weight {name!r} has no place in a {arch} with this config "
                f"(family {fam.name})"
            )
        if tuple(t.shape) != expected[name]:
            raise ExportError(
                f"export: weight {name!r} is {list(t.shape)} but a {arch} with this config has "
                f"{list(expected[name])} (a {fam.name} config cannot express this change)"
            )
    missing = sorted(set(expected) - set(tensors))
    if missing:
        raise ExportError(
            f"export: graph @{graph.name} lacks {len(missing)} weight(s) of a {arch}, "
            f"e.g. {missing[0]!r}"
        )
