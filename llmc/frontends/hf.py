"""Hugging Face causal LMs -> llmc IR (the LM ABI ``llmc-lm-v1``).

:func:`from_hf_model` substitutes the model's attention, norms and rotary embedding with ``llmc::``
custom ops (:mod:`llmc.frontends.families`), exports the full-sequence forward
``(input_ids, positions) -> logits`` with ``torch.export`` (dynamic ``batch`` and ``seq``; the
legacy ``torch.export`` strict mode is tried if the default fails), maps the ATen graph onto the IR
(:mod:`llmc.frontends.fx_convert`) and adds the KV cache (:func:`llmc.frontends.canon.add_kv_cache`).

Example::

    model = transformers.LlamaForCausalLM(config).eval()
    g = from_hf_model(model, name="my-llama")
    logits, *present = llmc.runtime.interp.run(g, [ids, positions] + past)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from llmc.errors import LlmcError, UnsupportedOpError
from llmc.frontends import canon
from llmc.frontends.families import Family, canonical_pieces, family_of, model_meta
from llmc.frontends.fx_convert import ConvertOptions, convert_exported
from llmc.ir.graph import Graph
from llmc.ir.types import from_torch_dtype
from llmc.ir.verify import verify

# Example sizes for tracing: > 1 (export specializes sizes 0 and 1) and distinct from each other.
EXAMPLE_BATCH, EXAMPLE_SEQ = 2, 5


class _LM(torch.nn.Module):
    """``(input_ids, positions) -> logits`` of a causal LM, no cache, explicit positions."""

    def __init__(self, m: torch.nn.Module) -> None:
        super().__init__()
        self.m = m

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        out = self.m(input_ids=input_ids, position_ids=positions, use_cache=False)
        return out.logits if hasattr(out, "logits") else out[0]


def _device_of(model: torch.nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def param_names(model: torch.nn.Module) -> dict[str, str]:
    """Every parameter/buffer FQN -> its canonical name (tied weights share the first owner's)."""
    first: dict[int, str] = {}
    out: dict[str, str] = {}
    named = list(model.named_parameters(remove_duplicate=False)) + list(
        model.named_buffers(remove_duplicate=False)
    )
    for name, t in named:
        key = id(t)
        first.setdefault(key, name)
        out[name] = first[key]
    return out


def export_lm(model: torch.nn.Module) -> torch.export.ExportedProgram:
    """``torch.export`` of the full-sequence forward with dynamic batch and seq."""
    dev = _device_of(model)
    ids = torch.zeros((EXAMPLE_BATCH, EXAMPLE_SEQ), dtype=torch.int64, device=dev)
    pos = torch.arange(EXAMPLE_SEQ, dtype=torch.int64, device=dev).expand(EXAMPLE_BATCH, -1)
    pos = pos.contiguous()
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq")
    dyn = {"input_ids": {0: batch, 1: seq}, "positions": {0: batch, 1: seq}}
    wrapper = _LM(model)
    errors = []
    for strict in (False, True):
        try:
            with torch.no_grad():
                return torch.export.export(wrapper, (ids, pos), dynamic_shapes=dyn, strict=strict)
        except LlmcError:
            raise
        except Exception as e:  # export raises many error types; report both attempts
            errors.append(f"{'strict' if strict else 'non-strict'}: {type(e).__name__}: {e}")
    raise UnsupportedOpError(
        f"torch.export failed for {type(model).__name__}: "
        + " | ".join(x.splitlines()[0] for x in errors)  # fmt: skip
    )


def from_hf_model(
    model: torch.nn.Module,
    *,
    name: str,
    num_layers: int | None = None,
    layer_types: list[str] | None = None,
    verify_graph: bool = True,
    keep_copy: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Graph:
    """The IR graph (LM ABI ``llmc-lm-v1``) of a Hugging Face causal LM of a supported family.

    ``num_layers`` > the model's layer count replicates the last layer (architecture-only models
    on the ``meta`` device; see :func:`llmc.frontends.canon.replicate_layers`); ``layer_types``
    (one per layer of the result) replicates each layer from a built layer of its type.
    ``keep_copy`` keeps the weight copies the conversion makes (:class:`ConvertOptions`).
    """
    fam = family_of(model)
    was_training = model.training
    model.eval()
    try:
        with canonical_pieces(model, fam):
            ep = export_lm(model)
    finally:
        model.train(was_training)
    names = param_names(model)
    opts = ConvertOptions(
        dims={"input_ids": {0: "batch", 1: "seq"}, "positions": {0: "batch", 1: "seq"}},
        strip_prefix="m.",
        param_name=lambda n: names.get(n, n),
        output_names=["logits"],
        keep_copy=keep_copy,
    )
    g = convert_exported(ep, name, opts)
    return finish_lm_graph(
        g, model, fam, num_layers=num_layers, layer_types=layer_types, verify_graph=verify_graph
    )


def finish_lm_graph(
    g: Graph,
    model: torch.nn.Module,
    fam: Family,
    *,
    num_layers: int | None = None,
    layer_types: list[str] | None = None,
    verify_graph: bool = True,
) -> Graph:
    canon.fold_flat_linear(g)
    meta = model_meta(model, fam)
    if num_layers is not None and num_layers > meta["num_layers"]:
        built = meta.get("layer_types") if layer_types is not None else None
        canon.replicate_layers(g, fam.layers, num_layers, layer_types, built)
        meta["num_layers"] = num_layers
        if layer_types is not None:
            meta["layer_types"] = list(layer_types)
    g.dce()
    n = canon.add_kv_cache(g, fam.layers)
    if len(g.inputs) > 2:  # the traced cache layout is the truth (Falcon's multi-query: 1 head)
        kv = g.inputs[2].type.shape
        meta["num_kv_heads"], meta["head_dim"] = int(kv[1]), int(kv[3])
    if n != meta["num_layers"]:
        raise LlmcError(
            f"{type(model).__name__}: traced {n} attention layers but the config has "
            f"{meta['num_layers']}"
        )
    emb = model.get_input_embeddings().weight if hasattr(model, "get_input_embeddings") else None
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    meta["tie_word_embeddings"] = bool(emb is not None and head is not None and head.weight is emb)
    meta["dtype"] = g.outputs[0].type.dtype
    meta["kv_dtype"] = g.inputs[2].type.dtype if len(g.inputs) > 2 else meta["dtype"]
    meta["param_dtype"] = from_torch_dtype(emb.dtype) if emb is not None else meta["dtype"]
    transposed = sorted(
        n for n, p in g.params.items() if n.endswith(".weight") and _is_conv1d(model, n, p)
    )
    if transposed:
        meta["transposed_params"] = transposed
    g.meta = meta
    if verify_graph:
        verify(g, f"frontend ({fam.name})")
    return g


def _is_conv1d(model: torch.nn.Module, name: str, p: Any) -> bool:
    mod_name = name.rsplit(".", 1)[0]
    try:
        mod = model.get_submodule(mod_name)
    except AttributeError:
        return False
    return type(mod).__name__ == "Conv1D"
