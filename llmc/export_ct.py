"""Export a compressed graph as a ``compressed-tensors`` checkpoint (what vLLM and llm-compressor
read), written through the ``compressed-tensors`` library.

The directory is :func:`llmc.export_hf.export_hf`'s (config, tokenizer, ``llmc_compression.json``
with the pipeline), except that each quantized weight is stored the library's way:

- weight-only (``rtn``, ``gptq``): format ``pack-quantized`` — ``NAME.weight_packed`` (int32,
  ``32 / bits`` codes a word), ``NAME.weight_scale`` ``[out, in // group]`` (``[out, 1]`` per
  channel), ``NAME.weight_shape``, and for asymmetric weights ``NAME.weight_zero_point`` (packed);
  scheme ``QuantizationArgs(num_bits, type=int, symmetric, strategy=group|channel, group_size)``;
- W8A8 (``w8a8``, ``smoothquant,w8a8``): format ``int-quantized`` — ``NAME.weight`` (int8),
  ``NAME.weight_scale`` ``[out, 1]`` and the activation scheme llmc runs: int8 symmetric, dynamic
  per token (``strategy=token, dynamic=true``), or static per tensor with ``NAME.input_scale``.

The tensors come from the library's compressors (``BaseCompressor`` registry, chosen by
``infer_module_format``) and the ``quantization_config`` in ``config.json`` from its
``QuantizationConfig``/``QuantizationScheme`` and ``ModelCompressor.update_config``. llmc's codes
are kept: llmc's asymmetric codes ``[0, 2**bits - 1]`` with zero ``z`` become the library's signed
codes ``q - 2**(bits-1)`` with zero point ``z - 2**(bits-1)``, so ``(q - zero) * scale`` is
unchanged; the compressor's codes are unpacked after compression and checked against llmc's, so a
written weight decompresses to exactly llmc's dequantized value (fp32).

Activation rounding: llmc's ``qlinear_a8`` (:mod:`llmc.ir.ops_quant`) uses ``s = max|x| / 127``
and codes in ``[-127, 127]``; compressed-tensors' Python reference (``calculate_qparams``) uses
``max|x| / 127.5`` and ``[-128, 127]`` for the same declared scheme. The scheme (int8, symmetric,
dynamic, per token) is the same; the last-bit rounding of a runtime may differ from llmc's.

Sparsity: compressed-tensors 0.20 has no sparse compressor (``sparse-24-bitmask`` and
``sparse-bitmask`` were removed after 0.14; ``ModelCompressor`` writes ``sparsity_config: {}``).
Pruned weights are therefore stored with their zeros (dense, or inside the quantized codes, whose
zero code is the zero point) and declared in ``quantization_config.sparsity_config`` with the
library's ``DenseSparsityConfig`` (``format: dense``, ``sparsity_structure`` ``"2:4"`` or
``"unstructured"``, ``global_sparsity``: the fraction of zero parameters, ``targets``: the pruned
linears).

Refused in one line (before anything is written): pipelines whose model a checkpoint cannot hold
(:data:`REFUSED_PASSES`: per-token FFN skipping, token pruning, dropped FFN blocks), quantized
weights that are not an ``nn.Linear`` of the transformers model (GPT-2's ``Conv1D``, embeddings,
fused MoE experts), and codes the library's encoding does not reproduce. Example::

    export_compressed_tensors(graph, Path("out/tiny-w4"), tokenizer=tok, config=loaded.config)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from llmc.errors import LlmcError
from llmc.export_hf import (
    ExportError,
    HFTensors,
    check_out_dir,
    collect_hf,
    pipeline_fields,
    save_tokenizer_hf,
    write_dir,
)
from llmc.ir.graph import Graph
from llmc.ir.params import Param

# pass -> why its model has no compressed-tensors (or Hugging Face) form
REFUSED_PASSES = {
    "ffn-skip": "it skips FFN blocks per token at run time (a `cond` a checkpoint cannot hold)",
    "token-prune": "it drops prompt tokens between layers at run time",
    "ffn-drop": "it removes whole FFN blocks, which a transformers config cannot say",
}
# ops those passes leave in the graph (an artifact may not list its passes)
_OPS_OF = {
    "cond": "ffn-skip",
    "token_scores": "token-prune",
    "keep_rows": "token-prune",
    "gather_rows": "token-prune",
}


class CompressedTensorsMissing(LlmcError):
    """The ``compressed-tensors`` package is not installed."""


def require_library() -> str:
    """The installed compressed-tensors version, or a one-line error saying how to install it."""
    try:
        import compressed_tensors
    except ImportError as e:
        raise CompressedTensorsMissing(
            "--format compressed-tensors needs the compressed-tensors package "
            f"(pip install 'llmc[compressed-tensors]'): {e}"
        ) from None
    return str(compressed_tensors.__version__)


def refuse_unrepresentable(graph: Graph, pipeline: str) -> None:
    """Raise :class:`ExportError` naming the pass when the model cannot be a checkpoint."""
    names = [p.split(":", 1)[0].strip() for p in pipeline.split(",") if p.strip()]
    for n in graph.nodes:
        if n.op in _OPS_OF:
            names.append(_OPS_OF[n.op])
    for name in names:
        if name in REFUSED_PASSES:
            raise ExportError(
                f"export --format compressed-tensors: pass {name} cannot be exported: "
                f"{REFUSED_PASSES[name]} (export the model without it)"
            )


@dataclass
class _Group:
    scheme: Any  # compressed_tensors QuantizationScheme
    modules: list[str] = field(default_factory=list)


def _act_scales(graph: Graph) -> dict[str, float]:
    """Weight name -> static activation scale (0.0: dynamic per token) of its qlinear_a8."""
    return {n.attrs.weight: float(n.attrs.act_scale) for n in graph.nodes if n.op == "qlinear_a8"}


def _scheme(p: Param, act_scale: float | None) -> Any:
    from compressed_tensors.compressors.format import infer_module_format
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

    q = p.format.quant
    assert q is not None
    weights = QuantizationArgs(
        num_bits=q.bits,
        type="int",
        symmetric=q.symmetric,
        strategy="group" if q.group else "channel",
        group_size=q.group or None,
    )
    acts = None
    if act_scale is not None:  # qlinear_a8: int8 symmetric per token (dynamic) or per tensor
        acts = QuantizationArgs(
            num_bits=8,
            type="int",
            symmetric=True,
            strategy="tensor" if act_scale > 0 else "token",
            dynamic=act_scale <= 0,
        )
    if q.act_bits:  # QuantSpec.act_bits: int8 symmetric per block of act_group (0: per token)
        acts = QuantizationArgs(
            num_bits=q.act_bits,
            type="int",
            symmetric=True,
            strategy="group" if q.act_group else "token",
            group_size=q.act_group or None,
            dynamic=True,
        )
    scheme = QuantizationScheme(targets=["Linear"], weights=weights, input_activations=acts)
    scheme.format = infer_module_format(torch.nn.Linear, scheme).value
    return scheme


def _codes_offset(p: Param) -> int:
    q = p.format.quant
    assert q is not None
    return 0 if q.symmetric else 2 ** (q.bits - 1)


def _state_dict(p: Param, act_scale: float | None) -> dict[str, torch.Tensor]:
    """The module-local state dict the library's compressors take: the float weight (llmc's
    dequantized value in fp32), its scales and zero points in the library's signed range."""
    q = p.format.quant
    assert q is not None
    codes = p.data["qvalue"]
    out_f, in_f = codes.shape
    g = q.group or in_f
    scale = p.data["scale"].to(torch.float32)
    c = codes.to(torch.float32).reshape(out_f, in_f // g, g)
    sd: dict[str, torch.Tensor] = {}
    if "zero" in p.data:
        zero = p.data["zero"]
        c = c - zero.to(torch.float32).reshape(out_f, in_f // g, 1)
        sd["weight_zero_point"] = (zero.to(torch.int16) - _codes_offset(p)).to(torch.int8)
    sd["weight"] = (c * scale.reshape(out_f, in_f // g, 1)).reshape(out_f, in_f)
    sd["weight_scale"] = scale.contiguous()
    if act_scale:
        sd["input_scale"] = torch.tensor([act_scale], dtype=torch.float32)
    return sd


def _stored_codes(compressed: dict[str, torch.Tensor], scheme: Any) -> torch.Tensor:
    from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32

    if "weight_packed" in compressed:
        shape = compressed["weight_shape"]
        return unpack_from_int32(compressed["weight_packed"], scheme.weights.num_bits, shape)
    return compressed["weight"]


def _compress(name: str, p: Param, act_scale: float | None) -> tuple[Any, dict[str, Any]]:
    from compressed_tensors.compressors import BaseCompressor

    scheme = _scheme(p, act_scale)
    compressor = BaseCompressor.get_value_from_registry(scheme.format)
    out = compressor.compress(_state_dict(p, act_scale), scheme)
    want = p.data["qvalue"].to(torch.int16) - _codes_offset(p)
    if not torch.equal(_stored_codes(out, scheme).to(torch.int16), want):
        raise ExportError(
            f"export --format compressed-tensors: weight {name!r} ({p.format}): the library's "
            f"{scheme.format} encoding does not reproduce llmc's codes"
        )
    return scheme, {k: v.contiguous() for k, v in out.items()}


def _linear_modules(hf: HFTensors, graph: Graph) -> set[str]:
    """Names of the ``nn.Linear`` modules of the transformers model the config builds."""
    from llmc.export_hf import _family
    from llmc.frontends.hf_dir import build_module

    model = build_module(hf.cfg, _family(graph, True), f"export of @{graph.name}")
    return {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}


def _sparsity_config(graph: Graph, hf: HFTensors) -> dict[str, Any] | None:
    from compressed_tensors.config import DenseSparsityConfig

    sparse = {n: p for n, p in graph.params.items() if p.format.sparsity is not None}
    if not sparse:
        return None
    kinds = {
        f"{s.n}:{s.m}" if s.kind == "nm" else "unstructured"
        for s in (p.format.sparsity for p in sparse.values())
    }
    # as llm-compressor's SparsityConfigMetadata: the fraction of zero parameters in the model
    zeros = sum(int((t == 0).sum()) for t in hf.tensors.values())
    total = sum(t.numel() for t in hf.tensors.values())
    cfg = DenseSparsityConfig(
        targets=sorted(n.removesuffix(".weight") for n in sparse),
        global_sparsity=round(zeros / max(total, 1), 6),
        sparsity_structure=kinds.pop() if len(kinds) == 1 else "unstructured",
    )
    return cfg.model_dump()


def export_compressed_tensors(
    graph: Graph,
    out_dir: Path | str,
    *,
    tokenizer: Any = None,
    config: dict[str, Any] | None = None,
    pipeline: str | None = None,
    recipe: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write ``graph`` to ``out_dir`` as a compressed-tensors checkpoint (see the module
    docstring); returns a summary dict. ``recipe``: as :func:`llmc.export_hf.export_hf`."""
    version = require_library()
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.config import CompressionFormat
    from compressed_tensors.quantization import QuantizationConfig, QuantizationStatus
    from safetensors.torch import save_file

    out = Path(out_dir)
    check_out_dir(out, overwrite)
    # the passes the graph went through, and the recorded pipeline (which may name a recipe)
    refuse_unrepresentable(graph, ",".join(x for x in (graph.pipeline, pipeline) if x))
    hf = collect_hf(graph, config, pipeline)
    quantized = {n: p for n, p in graph.params.items() if p.format.quant is not None}
    linears = _linear_modules(hf, graph) if quantized else set()
    acts = _act_scales(graph)
    groups: list[_Group] = []
    tensors = dict(hf.tensors)
    for name, p in quantized.items():
        module = name.removesuffix(".weight")
        if name in hf.transposed or module not in linears or name == module:
            raise ExportError(
                f"export --format compressed-tensors: quantized weight {name!r} is not the weight "
                "of an nn.Linear in the transformers model (compressed-tensors quantizes Linear "
                "layers; GPT-2's Conv1D and embeddings are not): do not quantize it"
            )
        scheme, local = _compress(name, p, acts.get(name))
        del tensors[name]
        for k, v in local.items():
            tensors[f"{module}.{k}"] = v
        grp = next((g for g in groups if g.scheme == scheme), None)
        if grp is None:
            grp = _Group(scheme)
            groups.append(grp)
        grp.modules.append(module)
    formats = sorted({g.scheme.format for g in groups})
    notes = _notes(groups)
    qconfig = None
    if groups:
        config_groups = {}
        for i, g in enumerate(groups):
            g.scheme.targets = list(g.modules)
            config_groups[f"group_{i}"] = g.scheme
        qconfig = QuantizationConfig(
            config_groups=config_groups,
            format=formats[0] if len(formats) == 1 else CompressionFormat.mixed_precision.value,
            quantization_status=QuantizationStatus.COMPRESSED,
        )
    sparsity = _sparsity_config(graph, hf)
    compression = hf.compression(
        "model.safetensors is a compressed-tensors checkpoint (quantization_config in "
        "config.json): quantized linears in the library's format, every other weight dense; "
        "pruned weights keep their zeros (compressed-tensors 0.20 has no sparse compressor)."
    )
    compression["compressed_tensors"] = {"version": version, "formats": formats, "notes": notes}
    compression.update(pipeline_fields(graph, hf.pipeline, recipe))

    def fill(tmp: Path) -> None:
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(hf.cfg, indent=2, sort_keys=True) + "\n")
        if qconfig is not None:
            ModelCompressor(quantization_config=qconfig).update_config(str(tmp))
        if sparsity is not None:
            cfg = json.loads((tmp / "config.json").read_text())
            qc = cfg.setdefault(
                "quantization_config",
                {"quant_method": "compressed-tensors", "version": version, "config_groups": {}},
            )
            qc["sparsity_config"] = sparsity
            (tmp / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        (tmp / "llmc_compression.json").write_text(json.dumps(compression, indent=2) + "\n")
        save_tokenizer_hf(tokenizer, tmp)

    write_dir(out, fill)
    return {
        "out": str(out),
        "format": formats[0] if len(formats) == 1 else ("mixed-precision" if formats else "dense"),
        "config_groups": len(groups),
        "quantized_weights": len(quantized),
        "sparse_weights": sum(1 for p in graph.params.values() if p.format.sparsity is not None),
        "sparsity_structure": sparsity["sparsity_structure"] if sparsity else None,
        "tensors": len(tensors),
        "architecture": hf.cfg["architectures"][0],
        "pipeline": hf.pipeline,
        "compressed_tensors": version,
        "notes": notes,
    }


def _notes(groups: list[_Group]) -> list[str]:
    """What a reader of the checkpoint should know about its schemes (one line each)."""
    notes = []
    odd = sorted({g.scheme.weights.num_bits for g in groups} - {4, 8})
    if odd:
        notes.append(
            f"int{'/int'.join(map(str, odd))} weights: compressed-tensors stores and decompresses "
            "them exactly; vLLM's pack-quantized (WNA16) kernels take 4 or 8 bits"
        )
    if any(not g.scheme.weights.symmetric for g in groups):
        notes.append(
            "asymmetric packed weights: the library decompresses them; transformers 5 with "
            "compressed-tensors 0.20 fails to load asymmetric pack-quantized checkpoints, the "
            "library's own included (vllm-project/llm-compressor#1618)"
        )
    if any(g.scheme.input_activations is not None for g in groups):
        notes.append(
            "W8A8 activations: llmc rounds with max|x| / 127 into [-127, 127]; compressed-tensors' "
            "reference (and transformers) with max|x| / 127.5 into [-128, 127] for the same scheme"
        )
    return notes
