"""Replacement ``forward``s for family-specific modules (:mod:`llmc.frontends.families`).

Each factory takes the module and returns a ``forward`` that computes what the module computes
through ``llmc::`` custom ops or single ATen ops, so the traced graph holds the canonical op:

- :func:`falcon_attention`: Falcon's attention, which calls no attention interface;
- :func:`linear_forward`: ``x @ w.T + b`` written out (``FalconLinear``) as ``F.linear``;
- :func:`scaled_embedding_forward`: Gemma's ``embedding * sqrt(hidden)``;
- :func:`capped_head_forward`: Gemma 2's final logit soft-capping inside the head;
- :func:`moe_forward`: Mixtral / Qwen2-MoE sparse blocks as ``llmc::moe``.
"""

from __future__ import annotations

import importlib
from typing import Any

import torch
import torch.nn.functional as F

from llmc.errors import UnsupportedOpError
from llmc.frontends import customops  # noqa: F401  (registers the llmc:: ops)


def scaled_embedding_forward(mod: torch.nn.Module) -> Any:
    """Gemma's ``embedding * sqrt(hidden)``, with the scale a constant rounded to the weight's
    dtype as transformers rounds it (its buffer copy is not persistent: a checkpoint lacks it)."""
    scale = float(torch.tensor(float(mod.scalar_embed_scale), dtype=mod.weight.dtype))

    def forward(input_ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(input_ids, mod.weight) * scale

    return forward


def falcon_attention(mod: torch.nn.Module) -> Any:
    """Falcon's attention (it calls no attention interface): the fused ``query_key_value``
    split into q, k, v for the three layouts (multi-head, multi-query, grouped
    ``new_decoder_architecture``), rope, ``llmc::attention``, ``dense``."""
    h, hd = mod.num_heads, mod.head_dim
    new_arch, mq = bool(mod.new_decoder_architecture), bool(mod.multi_query)
    kvh = int(mod.num_kv_heads) if new_arch else (1 if mq else h)
    modeling = importlib.import_module("transformers.models.falcon.modeling_falcon")

    def forward(hidden_states: torch.Tensor, alibi: Any = None, *a: Any, **kw: Any) -> Any:
        if alibi is not None:
            raise UnsupportedOpError(
                "FalconAttention: ALiBi position biases (config alibi: true) are not supported"
            )
        b, s, _ = hidden_states.shape
        fused = mod.query_key_value(hidden_states)
        if new_arch:
            qkv = fused.view(b, s, kvh, h // kvh + 2, hd)
            q = qkv[:, :, :, :-2].reshape(b, s, h, hd)
            k, v = qkv[:, :, :, -2], qkv[:, :, :, -1]
        elif mq:
            qkv = fused.view(b, s, h + 2, hd)
            q, k, v = qkv[:, :, :-2], qkv[:, :, -2:-1], qkv[:, :, -1:]
        else:
            qkv = fused.view(b, s, h, 3, hd)
            q, k, v = qkv[..., 0, :], qkv[..., 1, :], qkv[..., 2, :]
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        cos, sin = kw["position_embeddings"]
        q, k = modeling.apply_rotary_pos_emb(q, k, cos, sin)
        out = torch.ops.llmc.attention(q, k, v, 0.0, True, 0, 0.0)
        out = out.transpose(1, 2).reshape(b, s, h * hd)
        return mod.dense(out), None

    return forward


def linear_forward(mod: torch.nn.Module) -> Any:
    """A linear written as ``x @ w.T (+ b)`` (FalconLinear) as ``F.linear``, so it traces as
    one ``linear`` reading its weight in place."""

    def forward(x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, mod.weight, mod.bias)

    return forward


LINEARS = ("FalconLinear",)


def capped_head_forward(mod: torch.nn.Module, cap: float) -> Any:
    """The LM head followed by logit soft-capping, in transformers' order."""

    def forward(x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(F.linear(x, mod.weight, mod.bias) / cap) * cap

    return forward


def moe_forward(mod: torch.nn.Module) -> Any:
    """A sparse MoE block as ``llmc::moe`` on the rows (plus Qwen2-MoE's shared expert, gated by
    a sigmoid, in ordinary ops)."""
    experts, gate = mod.experts, mod.gate
    normalize = bool(getattr(gate, "norm_topk_prob", True))
    act = experts.act_fn
    name = {"SiLUActivation": "silu", "SiLU": "silu", "ReLU": "relu", "GELUActivation": "gelu",
            "GELU": "gelu"}.get(type(act).__name__)  # fmt: skip
    if name is None:
        raise UnsupportedOpError(
            f"{type(mod).__name__}: expert activation {type(act).__name__} is not supported "
            "(silu, gelu, relu)"
        )
    if getattr(mod, "jitter_noise", 0) and mod.training:
        raise UnsupportedOpError(f"{type(mod).__name__}: router jitter in training mode")
    shared = getattr(mod, "shared_expert", None)

    def forward(hidden_states: torch.Tensor) -> torch.Tensor:
        out = torch.ops.llmc.moe(
            hidden_states,
            gate.weight,
            experts.gate_up_proj,
            experts.down_proj,
            int(gate.top_k),
            normalize,
            name,
        )
        if shared is not None:
            out = out + torch.sigmoid(mod.shared_expert_gate(hidden_states)) * shared(hidden_states)
        return out

    return forward
