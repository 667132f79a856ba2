"""A tensor-core GEMM for CUDA prefill (sm_80 and newer): ``y = x @ w.T`` with float16 operands
and float32 accumulation, written as scheduled TIR that calls ``mma.sync.m16n8k16`` directly.

Why by hand: dlight's ``MatmulTensorization`` reaches tensor cores through ``sch.tensorize``,
which crashes the apache-tvm 0.27 process for every intrinsic (even a 4-element one we registered
ourselves: a segfault in ``ToJSONGraph`` under ``s_tir::Tensorize``). This kernel needs no
tensorize: ``T.ptx_legacy.mma`` emits the instruction as inline PTX, and the fragments are plain
per-thread arrays filled from shared memory in the layout the PTX ISA gives for
``mma.m16n8k16`` with f16 inputs (``g = lane / 4``, ``t = lane % 4``):

- A (16 x 16, row-major): 8 halves; ``a[h*4 + q*2 + e] = A[q*8 + g, h*8 + t*2 + e]``;
- B (16 x 8, "col", so a row of ``w[N, K]``): 4 halves; ``b[h*2 + e] = B[h*8 + t*2 + e, g]``;
- C (16 x 8, f32): 4 floats; ``c[q*2 + e] = C[q*8 + g, t*2 + e]``.

Tiling: a 128-thread block computes 64 x 64 outputs, each of its four warps 32 x 32 (2 x 4 mma
tiles, 32 accumulators per thread); K advances 16 at a time through shared memory. Rows past
``M = batch * seq`` read zeros and are not written. It is a first, straightforward version:
no vectorized or asynchronous copies, no double buffering (see docs/backends.md for what was
measured and what was not).
"""

from __future__ import annotations

from tvm import tirx
from tvm.script import tirx as T

from llmc.backends.kernels.memo import kernel_memo

BM, BN, BK = 64, 64, 16  # block tile
WM, WN = 32, 32  # warp tile (4 warps: 2 x 2)
MI, NI = WM // 16, WN // 8  # mma tiles per warp


def supported(n: int, k: int) -> bool:
    """Shapes the kernel takes: ``N`` a multiple of 64, ``K`` of 16 (any number of rows)."""
    return n % BN == 0 and k % BK == 0 and n > 0 and k > 0


@kernel_memo
def linear_tc(n: int, k: int, out_dtype: str = "float16") -> tirx.PrimFunc:
    """``Y[b, s, :] = X[b, s, :] @ W.T`` for ``X [B, S, k]`` and ``W [n, k]`` in float16,
    accumulated in float32, written as ``out_dtype``."""
    if not supported(n, k):
        raise ValueError(f"linear_tc needs N % {BN} == 0 and K % {BK} == 0, got N={n}, K={k}")
    f16 = "float16"

    # fmt: off
    @T.prim_func(s_tir=True)
    def linear_tc(x_h: T.handle, w_h: T.handle, y_h: T.handle):
        T.func_attr({"tirx.is_scheduled": True, "tirx.noalias": True})
        B = T.int64()
        S = T.int64()
        X = T.match_buffer(x_h, (B, S, k), f16)
        W = T.match_buffer(w_h, (n, k), f16)
        Y = T.match_buffer(y_h, (B, S, n), out_dtype)
        for bm in T.thread_binding((B * S + BM - 1) // BM, thread="blockIdx.y"):
            for bn in T.thread_binding(n // BN, thread="blockIdx.x"):
                for warp in T.thread_binding(4, thread="threadIdx.y"):
                    for lane in T.thread_binding(32, thread="threadIdx.x"):
                        with T.sblock("linear_tc"):
                            T.reads()
                            T.writes()
                            a_sh = T.sblock_alloc_buffer((BM, BK), f16, scope="shared")
                            b_sh = T.sblock_alloc_buffer((BN, BK), f16, scope="shared")
                            a_loc = T.sblock_alloc_buffer((MI * 8,), f16, scope="local")
                            b_loc = T.sblock_alloc_buffer((NI * 4,), f16, scope="local")
                            acc = T.sblock_alloc_buffer((MI * NI * 4,), "float32", scope="local")
                            tid: T.let[T.int64] = T.Cast("int64", warp * 32 + lane)
                            g: T.let[T.int64] = T.Cast("int64", lane // 4)
                            t: T.let[T.int64] = T.Cast("int64", lane % 4)
                            wm: T.let[T.int64] = T.Cast("int64", warp // 2) * WM
                            wn: T.let[T.int64] = T.Cast("int64", warp % 2) * WN
                            for e in T.serial(MI * NI * 4):
                                acc[e] = T.float32(0)
                            for kb in T.serial(k // BK):
                                for e in T.serial(8):  # 128 threads x 8 = one 64 x 16 tile each
                                    r: T.let[T.int64] = (tid * 8 + e) // BK
                                    c: T.let[T.int64] = (tid * 8 + e) % BK
                                    row: T.let[T.int64] = bm * BM + r
                                    a_sh[r, c] = T.if_then_else(
                                        row < B * S, X[row // S, row % S, kb * BK + c], T.float16(0))
                                    b_sh[r, c] = W[bn * BN + r, kb * BK + c]
                                T.tvm_storage_sync("shared")
                                for mi, h, q, e in T.grid(MI, 2, 2, 2):
                                    a_loc[mi * 8 + h * 4 + q * 2 + e] = a_sh[
                                        wm + mi * 16 + q * 8 + g, h * 8 + t * 2 + e]
                                for ni, h, e in T.grid(NI, 2, 2):
                                    b_loc[ni * 4 + h * 2 + e] = b_sh[wn + ni * 8 + g, h * 8 + t * 2 + e]
                                for mi, ni in T.grid(MI, NI):
                                    T.evaluate(T.ptx_legacy.mma(
                                        "m16n8k16", "row", "col", "fp16", "fp16", "fp32",
                                        a_loc.data, mi * 8, b_loc.data, ni * 4,
                                        acc.data, (mi * NI + ni) * 4, False, dtype="float32"))
                                T.tvm_storage_sync("shared")
                            for mi, ni, q, e in T.grid(MI, NI, 2, 2):
                                row: T.let[T.int64] = bm * BM + wm + mi * 16 + q * 8 + g
                                if row < B * S:
                                    Y[row // S, row % S, bn * BN + wn + ni * 8 + t * 2 + e] = T.Cast(
                                        out_dtype, acc[(mi * NI + ni) * 4 + q * 2 + e])
    # fmt: on
    return linear_tc
