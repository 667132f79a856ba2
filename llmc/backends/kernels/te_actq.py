"""The recorded activation quantization (``QuantSpec.act_bits = 8``) as a TE fake-quant.

Any target's dequantizing linear runs on ``act_fake_quant(x)`` instead of ``x`` and so computes
exactly the reference ``x_hat @ dequantize(w).T`` (:func:`llmc.ir.params.fake_quant_act`: the
same float32 operations in the same order). The CPU's VNNI kernels fuse it instead
(:func:`llmc.backends.kernels.cpu_vnni.act_int8`).
"""

from __future__ import annotations

from typing import Any

from tvm import te, tirx

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
