"""The kernel builders' process-wide memo (llmc.backends.kernels.memo)."""

from __future__ import annotations

from llmc.backends.kernels import cpu_gemm, cpu_vnni
from llmc.backends.kernels.memo import kernel_memo


def test_memo_returns_the_built_kernel_once_per_argument_set():
    calls = []

    @kernel_memo
    def build(n, dtype="f32", opts=()):
        calls.append((n, dtype, opts))
        return object()

    a = build(4)
    assert build(4) is a and calls == [(4, "f32", ())]
    assert build(4.0) is not a  # typed: 4.0 builds another kernel
    assert build(4, dtype="f16") is not a
    lst = [1]
    b, c = build(5, opts=lst), build(5, opts=lst)  # unhashable: built each time, no error
    assert b is not c and calls[-2:] == [(5, "f32", [1]), (5, "f32", [1])]


def test_a_memoized_kernel_is_the_same_primfunc_and_structurally_a_fresh_one():
    f1 = cpu_vnni.q4_vnni(256, (64, 32), 32, 1, "float32", 1)
    assert cpu_vnni.q4_vnni(256, (64, 32), 32, 1, "float32", 1) is f1
    info = cpu_vnni.weight_only_vnni.cache_info()
    assert info.hits >= 1
    fresh = cpu_vnni.weight_only_vnni.__wrapped__(cpu_vnni.Q4, 256, (64, 32), 32, 1, "float32", 1)
    import tvm

    tvm.ir.assert_structural_equal(f1, fresh)
    g = cpu_gemm.w8a8_prefill(128, 64)
    assert cpu_gemm.w8a8_prefill(128, 64) is g and cpu_gemm.w8a8_prefill(128, 128) is not g
