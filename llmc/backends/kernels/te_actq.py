"""The recorded activation quantization (``QuantSpec.act_bits = 8``) as a TE fake-quant.

Any target's dequantizing linear runs on ``act_fake_quant(x)`` instead of ``x`` and so computes
exactly the reference ``x_hat @ dequantize(w).T`` (:func:`llmc.ir.params.fake_quant_act`: the
same float32 operations in the same order). The CPU's VNNI kernels fuse it instead
(:func:`llmc.backends.kernels.cpu_vnni.act_int8`).
"""

from __future__ import annotations

from typing import Any

from tvm import te, tirx
from tvm.script import tirx as T

from llmc.backends.kernels.memo import kernel_memo

F32 = "float32"
QMAX = 127.0  # llmc.ir.params.ACT_QMAX


def act_fake_quant(x: te.Tensor, act_group: int) -> te.Tensor:
    """``x [..., K]`` with each block of ``act_group`` elements of the last axis (0: the whole
    row) quantized to int8 (``s = max(amax, 1e-30) / 127``, ``round(x / s)`` clamped to
    +-127) and dequantized; same dtype as ``x``."""
    shape = list(x.shape)
    k = int(shape[-1])
    g = k if act_group == 0 or act_group >= k else act_group
    if k % g:
        raise ValueError(f"activation width {k} is not a multiple of act_group {act_group}")
    r = te.reduce_axis((0, g), "r")

    def amax(*idx: Any) -> Any:
        return te.max(tirx.abs(x[(*idx[:-1], idx[-1] * g + r)].astype(F32)), axis=r)

    a = te.compute((*shape[:-1], k // g), amax, name="actq_amax")

    def fq(*idx: Any) -> Any:
        s = tirx.max(a[(*idx[:-1], idx[-1] // g)], tirx.const(1e-30, F32)) / tirx.const(QMAX, F32)
        v = tirx.round(x[idx].astype(F32) / s)
        v = tirx.max(tirx.min(v, tirx.const(QMAX, F32)), tirx.const(-QMAX, F32))
        return (v * s).astype(x.dtype)

    return te.compute(shape, fq, name="actq")


#: lanes of :func:`act_quant_rows`' running row maximum (one AVX-512 register of float32)
AMAX_LANES = 16


@kernel_memo
def act_quant_rows(k: int, dtype: str, floor: float = 1e-8, qmax: float = 127.0):
    """Per-row int8 quantization of ``x [M, K]`` (M symbolic), the same numbers as the TE
    :func:`llmc.backends.kernels.te_ops.act_quant` with a dynamic scale: ``s = max(amax,
    floor) / qmax``, ``codes = clamp(round(x / s), -qmax, qmax)``.

    The TE form's row maximum is one serial ``max`` chain that LLVM does not vectorize (a float
    reduction: 4 cycles of latency per element, ~2 ns per element with the divide pass). Here
    it runs in ``AMAX_LANES`` independent lanes, one vector ``max`` per 16 elements, then across
    the lanes: a maximum of absolute values is the same number in any order, so the scale and
    the codes are bit-identical to the TE kernel's for every finite input (a row holding NaN
    may keep or drop it in another place; the reference's scale is NaN there anyway). Rows are
    threaded; one row is read twice while it is in L1. ``K`` must be a multiple of
    ``AMAX_LANES`` (:func:`supports_rows`)."""
    lanes = AMAX_LANES
    assert k % lanes == 0, k
    kb = k // lanes

    # fmt: off
    @T.prim_func(s_tir=True)
    def act_quant(x_h: T.handle, q_h: T.handle, s_h: T.handle):
        T.func_attr({"tirx.is_scheduled": True, "tirx.noalias": True})
        M = T.int64()
        X = T.match_buffer(x_h, (M, k), dtype)
        Q = T.match_buffer(q_h, (M, k), "int8")
        S = T.match_buffer(s_h, (M,), "float32")
        for i in T.parallel(M):
            with T.sblock("act_quant"):
                T.reads()
                T.writes()
                part = T.alloc_buffer((lanes,), "float32", scope="local")
                sc = T.alloc_buffer((2,), "float32", scope="local")
                for e in T.vectorized(lanes):
                    part[e] = T.abs(T.Cast("float32", X[i, e]))
                for b in T.serial(kb - 1):
                    for e in T.vectorized(lanes):
                        part[e] = T.max(part[e], T.abs(T.Cast("float32", X[i, (b + 1) * lanes + e])))
                sc[0] = part[0]
                for e in T.serial(lanes - 1):
                    sc[0] = T.max(sc[0], part[e + 1])
                sc[1] = T.max(sc[0], T.float32(floor)) / T.float32(qmax)
                S[i] = sc[1]
                for b in T.serial(kb):
                    for e in T.vectorized(lanes):
                        Q[i, b * lanes + e] = T.Cast("int8", T.max(T.min(T.round(
                            T.Cast("float32", X[i, b * lanes + e]) / sc[1]), T.float32(qmax)),
                            T.float32(-qmax)))
    # fmt: on
    return act_quant


def supports_rows(k: int) -> bool:
    """Whether :func:`act_quant_rows` takes rows of ``k`` elements."""
    return k % AMAX_LANES == 0 and k >= AMAX_LANES
