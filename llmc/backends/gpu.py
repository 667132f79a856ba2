"""What the CUDA and ROCm pipelines share: entries, dlight schedules, GPU lowering rules.

A GPU pipeline compiles two entries: ``prefill`` (every size symbolic) and ``decode``
(``batch = seq = 1``), so that dlight sees decode's linear layers as matrix-vector products and
picks its GEMV schedule (with the dequantization of 4-bit weights inside the reduction). Weights
keep their ``[out, in]`` storage order, which is already the layout a GEMV wants: each output row
is one contiguous, coalesced read.
"""

from __future__ import annotations

from typing import Any

import tvm
from tvm import relax

from llmc.backends.kernels import attention_gpu
from llmc.backends.layouts import tvm_dtype
from llmc.backends.lower import Entry, LowerCtx
from llmc.backends.pipeline import TVMPipeline
from llmc.backends.rules import Rule, attention_scale
from llmc.ir.graph import Node

GPU_ENTRIES = (Entry("prefill"), Entry("decode", (("batch", 1), ("seq", 1))))


def dlight_rules() -> list[Any]:
    """The schedule rules, first match wins, ending in the fallback (injective) rule."""
    from tvm.s_tir import dlight as dl

    return [
        dl.gpu.Matmul(),
        dl.gpu.GEMV(),
        dl.gpu.LowBatchGEMV(),
        dl.gpu.Reduction(),
        dl.gpu.GeneralReduction(),
        dl.gpu.Fallback(),
    ]


def head_dims(ctx: LowerCtx, n: Node) -> tuple[int, int, int]:
    q, k = n.inputs[0].type, n.inputs[1].type
    h, kvh, d = ctx.static(q.shape[1]), ctx.static(k.shape[1]), ctx.static(q.shape[3])
    if h is None or kvh is None or d is None:
        raise ctx.unsupported("GPU attention needs static head counts and head_dim")
    return h, kvh, d


def _attention_kernel_ok(ctx: LowerCtx, n: Node) -> bool:
    d = ctx.static(n.inputs[0].type.shape[3])
    try:
        attention_gpu.warp_layout(d or 0)
    except ValueError:
        return False
    return True


def _attention_gpu(ctx: LowerCtx, n: Node) -> relax.Expr:
    q, k, v = ctx.args(n)
    a = n.attrs
    h, kvh, d = head_dims(ctx, n)
    dt = tvm_dtype(n.out.type.dtype)
    scale = attention_scale(n)
    key = ("attention_sync", h, kvh, d, dt, scale, a.causal, a.window)
    return ctx.call_kernel(
        key,
        lambda: attention_gpu.attention_sync(h, kvh, d, dt, scale, a.causal, a.window),
        "attention",
        [q, k, v],
        q.ty,
    )


GPU_RULES = [Rule("gpu.attention", "attention", _attention_gpu, when=_attention_kernel_ok)]


class GPUPipeline(TVMPipeline):
    entries = GPU_ENTRIES

    def target_rules(self) -> list[Rule]:
        return list(GPU_RULES)

    def schedule_passes(self, tvm_target: tvm.target.Target) -> list[tvm.transform.Pass]:
        from tvm.s_tir import dlight as dl

        return [dl.ApplyDefaultSchedule(*dlight_rules())]
