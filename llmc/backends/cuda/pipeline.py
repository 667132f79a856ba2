"""The CUDA pipeline: dlight-scheduled kernels, compiled to a fatbin by nvcc at build time.

Tables over the shared GPU pipeline (:mod:`llmc.backends.gpu`):

- TVM target: the registry's dict (``{"kind": "cuda", "arch": "sm_90"}``);
- toolchain: ``nvcc`` (:func:`llmc.backends.toolchain.cuda_toolchain`; a missing nvcc is a
  :class:`~llmc.backends.toolchain.ToolchainError` saying how to install it);
- export: TVM keeps CUDA source in the module; :mod:`llmc.backends.export` replaces it with the
  fatbin (SASS for the arch + PTX) from :func:`~llmc.backends.toolchain.nvcc_compile`, so the
  artifact loads with the TVM runtime and the CUDA driver only.
"""

from __future__ import annotations

import os
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import tvm
from tvm import relax

from llmc.backends.export import (
    export_with_device_code,
    make_cuda_payload,
    module_sources,
    split_payload,
)
from llmc.backends.gpu import GPUPipeline
from llmc.backends.kernels import te_ops
from llmc.backends.lower import LowerCtx
from llmc.backends.rules import Rule, add_bias_cast, is_dense, is_nm, weight_param
from llmc.ir.graph import Node


def _where_bits(ctx: LowerCtx, n: Node) -> relax.Expr:
    c, x, y = ctx.args(n)
    dt = n.out.type.dtype
    return ctx.emit_te(te_ops.where_bits, c, ctx.cast(x, dt), ctx.cast(y, dt), name="where")


def _float_select(ctx: LowerCtx, n: Node) -> bool:
    return n.inputs[0].type.dtype == "bool" and n.out.type.dtype in ("f32", "f16", "bf16")


#: opt-in switch for the hand-written tensor-core prefill GEMM (not yet run on a GPU)
TENSOR_CORES_ENV = "LLMC_CUDA_TENSOR_CORES"


def _tc_linear_ok(ctx: LowerCtx, n: Node) -> bool:
    """A float16 dense linear on rows that are not statically a handful (prefill, not decode's
    GEMV), with shapes the kernel takes, on sm_80 or newer."""
    from llmc.backends.kernels.matmul_tc import supported

    if os.environ.get(TENSOR_CORES_ENV) != "1" or n.out.type.dtype != "f16":
        return False
    arch = str((ctx.target.tvm_target or {}).get("arch", "sm_0"))
    if int("".join(ch for ch in arch[3:] if ch.isdigit()) or 0) < 80:
        return False
    p = weight_param(ctx, n)
    if len(n.inputs) < 2 or (p is not None and (not is_dense(p) or is_nm(p))):
        return False
    x, w = n.inputs[0].type, n.inputs[1].type
    if x.dtype != "f16" or len(x.shape) != 3 or len(w.shape) != 2:
        return False
    b, s = ctx.static(x.shape[0]), ctx.static(x.shape[1])
    if b is not None and s is not None and b * s < 16:
        return False
    nn, k = ctx.static(w.shape[0]), ctx.static(w.shape[1])
    return nn is not None and k is not None and supported(nn, k)


def _tc_linear(ctx: LowerCtx, n: Node) -> relax.Expr:
    from llmc.backends.kernels import matmul_tc

    x = ctx.arg(n.inputs[0])
    p = weight_param(ctx, n)
    w = ctx.weight(p, "dense", "f16") if p is not None else ctx.cast(ctx.arg(n.inputs[1]), "f16")
    nn, k = ctx.static(n.inputs[1].type.shape[0]), ctx.static(n.inputs[1].type.shape[1])
    assert nn is not None and k is not None
    b, s, _ = x.ty.shape.values
    y = ctx.call_kernel(
        ("matmul_tc", nn, k),
        lambda: matmul_tc.linear_tc(nn, k, "float16"),
        "linear_tc",
        [x, w],
        relax.TensorType([b, s, nn], "float16"),
    )
    return add_bias_cast(ctx, n, y, "f16")


class CUDAPipeline(GPUPipeline):
    kind = "cuda"

    def target_rules(self) -> list[Rule]:
        # a bool-masked select as bit operations: TVM 0.27's CUDA codegen vectorizes a select on
        # a bool tensor into ``float2 v = make_ushort2(...)`` (seen with ffn-skip's per-row keep
        # mask fused into a matmul epilogue), which nvcc rejects
        return [
            Rule("cuda.linear.tensor_core", "linear", _tc_linear, when=_tc_linear_ok),
            Rule("cuda.where.bits", "where", _where_bits, when=_float_select),
        ]

    def toolchain(self) -> AbstractContextManager[Any]:
        from llmc.backends.toolchain import cuda_toolchain

        return cuda_toolchain()

    def arch(self, tvm_target: tvm.target.Target) -> str:
        return str(tvm_target.attrs["arch"])

    def export_library(self, ex: relax.VMExecutable, path: Path) -> dict[str, Any]:
        from llmc.backends.toolchain import nvcc_compile

        arch = self._arch
        sources = module_sources(ex.mod, "cuda")
        compiled: list[dict[str, Any]] = []

        def rewrite(kind: str, payload: bytes) -> bytes:
            if kind != "cuda":
                return payload
            for src in sources:
                try:
                    fmt, fmap = split_payload(payload, src)
                except Exception:  # noqa: BLE001  (not this module's source)
                    continue
                if fmt != "cuda":
                    return payload  # already compiled (a CUDA-enabled build machine)
                with self.toolchain():
                    fatbin = nvcc_compile(src.decode(), arch, "fatbin")
                compiled.append({"arch": arch, "source_bytes": len(src), "fatbin": len(fatbin)})
                return make_cuda_payload("fatbin", fmap, fatbin)
            raise RuntimeError("a CUDA module's source was not found in the module tree")

        stats = export_with_device_code(ex, path, rewrite)
        return {"arch": arch, "device_code": compiled, **stats}

    def run(self, graph: Any, target: Any, out: Path, report: dict[str, Any]) -> dict[str, Any]:
        self._arch = self.arch(self.tvm_target(target))
        return super().run(graph, target, out, report)


PIPELINE = CUDAPipeline()
