"""``torch.library`` custom ops that stand for llmc's canonical transformer pieces during tracing.

Before export, the frontend substitutes a model's attention, RMSNorm and rotary embedding with calls
to these ops (see :mod:`llmc.frontends.patches`), so ``torch.export`` records each as ONE node that
the converter maps 1:1 onto the IR op of the same name. Their eager implementations *are* the IR
ops' reference semantics (:mod:`llmc.ir.ops`), so a patched model computes exactly what the IR will.

- ``llmc::attention(q, k, v, scale, causal, window, softcap)``: q ``[b, h, s, d]``, k/v ``[b, kv_h, t, d]``
  (grouped-query attention without ``repeat_kv``), causal mask bottom-right aligned.
- ``llmc::rms_norm(x, weight, eps)``.
- ``llmc::moe(x, router, gate_up, down, top_k, normalize, activation)``: the routed experts
  (:mod:`llmc.ir.ops_moe`), whose data-dependent dispatch export cannot trace.
- ``llmc::rope(x, positions, attrs)``: ``attrs`` is the JSON of :class:`~llmc.ir.ops.RopeAttrs`
  (a custom op's schema has no dataclass type; JSON keeps every field in one string).
"""

from __future__ import annotations

import dataclasses
import json

import torch

from llmc.ir.ops import (
    AttentionAttrs,
    NormAttrs,
    RopeAttrs,
    _attention_ref,
    _rms_norm_ref,
    _rope_ref,
)

__all__ = ["attention", "moe", "rms_norm", "rope", "rope_attrs_json", "rope_attrs_from_json"]


def rope_attrs_json(a: RopeAttrs) -> str:
    return json.dumps(dataclasses.asdict(a), sort_keys=True)


def rope_attrs_from_json(text: str) -> RopeAttrs:
    return RopeAttrs(**json.loads(text))


@torch.library.custom_op("llmc::attention", mutates_args=())
def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float,
    causal: bool,
    window: int,
    softcap: float = 0.0,
) -> torch.Tensor:
    a = AttentionAttrs(scale, causal, window, softcap)
    return _attention_ref([q, k, v], a, None).contiguous()


@attention.register_fake
def _attention_fake(q, k, v, scale, causal, window, softcap=0.0):  # noqa: ANN001, ANN202
    return q.new_empty(tuple(q.shape[:3]) + (v.shape[3],))


@torch.library.custom_op("llmc::rms_norm", mutates_args=())
def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return _rms_norm_ref([x, weight], NormAttrs(eps), None).contiguous()


@rms_norm.register_fake
def _rms_norm_fake(x, weight, eps):  # noqa: ANN001, ANN202
    return torch.empty_like(x)


@torch.library.custom_op("llmc::rope", mutates_args=())
def rope(x: torch.Tensor, positions: torch.Tensor, attrs: str) -> torch.Tensor:
    return _rope_ref([x, positions], rope_attrs_from_json(attrs), None).contiguous()


@rope.register_fake
def _rope_fake(x, positions, attrs):  # noqa: ANN001, ANN202
    return torch.empty_like(x)


@torch.library.custom_op("llmc::moe", mutates_args=())
def moe(
    x: torch.Tensor,
    router: torch.Tensor,
    gate_up: torch.Tensor,
    down: torch.Tensor,
    top_k: int,
    normalize: bool,
    activation: str,
) -> torch.Tensor:
    from llmc.ir.ops_moe import MoeAttrs, _moe_ref

    a = MoeAttrs(top_k, normalize, activation)
    return _moe_ref([x, router, gate_up, down], a, None).contiguous()


@moe.register_fake
def _moe_fake(x, router, gate_up, down, top_k, normalize, activation):  # noqa: ANN001, ANN202
    return torch.empty_like(x)
