"""N:M sparse CPU kernels on AVX-512: the activation is *permuted* into the weight's lanes.

The weight is a panel layout of its kept values, ``values [P, KK, 64]`` (``KK = K*N/M``, row
``kk = g*N + s`` holds slot ``s`` of group ``g`` for each of the panel's 64 outputs), and their
positions inside the group, packed ``BITS`` per position (:func:`index_bits`: 2 bits for
``M <= 4``, 4 bits for ``M <= 16``) into ``index [P, ceil(KK/PER), 64]`` bytes (``PER = 8/BITS``
positions per byte; position ``kk`` of output lane ``j`` is bits ``BITS*(kk % PER)`` of byte
``(kk // PER, j)``).

The gather of ``x[g*M + pos]`` into 16 output lanes is one register permute: the group's ``M``
activations are loaded once, repeated across the register (``[x0..x3]`` in each 128-bit lane for
2:4, twice ``[x0..x7]`` for 4:8, ``x0..x15`` for 8:16), and ``vpermilps`` (M <= 4, in-lane) or
``vpermps`` (M = 8, 16) picks each lane's element with the position bits as control. Both
instructions read only the low 2 (4) bits of each control lane, so unpacking a byte of positions
is one zero-extension and a shift per position, no mask. Per kept value and 16 outputs: one
permute and one FMA; the values are read once, like the dense panel GEMM's weights.

Decode (one row) reads ``N/M`` of the values plus ``BITS/32`` of that in positions (2:4 f32:
0.53 of the dense weight bytes). Prefill processes ``MB = 3`` rows per pass over a panel (rows
padded inside the kernel and never stored, as in :func:`llmc.backends.kernels.cpu._gemm`), so
each value and position vector loaded serves three rows.
"""

from __future__ import annotations

from typing import Any

from tvm import tirx
from tvm.script import tirx as T

from llmc.backends.kernels.cpu import SCRATCH
from llmc.backends.kernels.memo import kernel_memo
from llmc.backends.layouts import nm_index_bits as index_bits

F32 = "float32"
NB = 64  # outputs per panel: 4 zmm accumulators of 16 float32
VPERMILPS = "llvm.x86.avx512.vpermilvar.ps.512"
VPERMPS = "llvm.x86.avx512.permvar.sf.512"


def supports(n_keep: int, m_group: int, k_dim: int) -> bool:
    """Whether :func:`nm_permute` handles this format and shape: M a power of two up to 16,
    ``K`` whole groups."""
    return m_group in (2, 4, 8, 16) and 0 < n_keep < m_group and k_dim % m_group == 0


def index_rows(k_dim: int, n_keep: int, m_group: int) -> int:
    """Byte rows of the packed positions of one panel: ``ceil(KK / PER)``."""
    per = 8 // index_bits(m_group)
    return (k_dim // m_group * n_keep + per - 1) // per


def row_block(m: int | None) -> int:
    """Rows per register block: 1 for decode; 3 otherwise (12 accumulators of 16 lanes, leaving
    registers for the 4 value and 4 position vectors each row reuses; with 4 rows LLVM spills
    position vectors to the stack). At 128 rows on the loaded 2-vCPU host, 3 rows beat 2 and 4 in
    a first A/B at 768x3072 2:4, 3072x768 2:4 and 768x768 8:16 (load 9-11), but not in every shape
    of bench/cpu_sparse_decode.json's ``row_block`` (load 13): the differences are within noise."""
    return 1 if m == 1 else 3


def _spread(x: Any, m_group: int) -> Any:
    """``M`` activations (a float32xM vector) repeated to 16 lanes."""
    if m_group == 16:
        return x
    return T.Shuffle([x] * (16 // m_group), list(range(16)))


@kernel_memo
def nm_permute(
    k_dim: int,
    n_dim: int,
    n_keep: int,
    m_group: int,
    x_dtype: str,
    w_dtype: str,
    m: int | None = None,
    mb: int | None = None,
) -> tirx.PrimFunc:
    """``C[M, N] = X @ W.T`` for an N:M sparse W: ``x [M, K]``, ``values [P, KK, 64]``
    (``w_dtype``), ``index [P, ceil(KK/PER), 64]`` uint8 (packed positions); float32 result.
    ``mb`` overrides :func:`row_block` (benchmarks)."""
    assert supports(n_keep, m_group, k_dim), (n_keep, m_group, k_dim)
    bits = index_bits(m_group)
    per = 8 // bits
    kk_dim = k_dim // m_group * n_keep
    nrow = index_rows(k_dim, n_keep, m_group)
    panels = (n_dim + NB - 1) // NB
    mb = mb or row_block(m)
    rows: Any = tirx.Var("m", "int64") if m is None else m
    perm = VPERMILPS if m_group <= 4 else VPERMPS
    name = f"nm_permute{n_keep}{m_group}_k{k_dim}_n{n_dim}" + ("_m1" if m == 1 else "")
    xv = f"{x_dtype}x{m_group}"
    wv = f"{w_dtype}x16"

    @T.prim_func(private=True, s_tir=True)
    def f(
        x_h: T.handle,
        values: T.Buffer((panels, kk_dim, NB), w_dtype),
        index: T.Buffer((panels, nrow, NB), "uint8"),
        c_h: T.handle,
    ):
        T.func_attr({"tirx.noalias": True})
        x = T.match_buffer(x_h, (rows, k_dim), x_dtype)
        c = T.match_buffer(c_h, (rows, n_dim), F32)
        for p in T.parallel(panels):
            for ib in range((rows + mb - 1) // mb):
                with T.sblock("panel"):
                    T.reads(x[0:rows, 0:k_dim], values[p, 0:kk_dim, 0:NB], index[p, 0:nrow, 0:NB])
                    T.writes(c[ib * mb : ib * mb + mb, p * NB : p * NB + NB])
                    acc = T.alloc_buffer((mb * NB,), F32, scope=SCRATCH)
                    ctl = T.alloc_buffer((NB,), "int32", scope=SCRATCH)
                    for a in T.unroll(mb * 4):
                        acc[T.ramp(a * 16, 1, 16)] = T.broadcast(T.float32(0), 16)
                    for b in range(nrow):
                        for q in T.unroll(4):
                            ctl[T.ramp(q * 16, 1, 16)] = T.Cast(
                                "int32x16", index.vload([p, b, q * 16], "uint8x16")
                            )
                        for t in T.unroll(per):
                            if b * per + t < kk_dim:
                                for i in T.unroll(mb):
                                    xg = T.meta_var(
                                        _spread(
                                            T.Cast(
                                                f"float32x{m_group}",
                                                x.vload(
                                                    [
                                                        T.min(ib * mb + i, rows - 1),
                                                        (b * per + t) // n_keep * m_group,
                                                    ],
                                                    xv,
                                                ),
                                            ),
                                            m_group,
                                        )
                                    )
                                    for q in T.unroll(4):
                                        acc[T.ramp((i * 4 + q) * 16, 1, 16)] = acc[
                                            T.ramp((i * 4 + q) * 16, 1, 16)
                                        ] + T.call_llvm_pure_intrin(
                                            T.llvm_lookup_intrinsic_id(perm),
                                            xg,
                                            T.shift_right(
                                                ctl[T.ramp(q * 16, 1, 16)],
                                                T.broadcast(T.int32(bits) * t, 16),
                                            ),
                                            dtype="float32x16",
                                        ) * T.Cast(
                                            "float32x16", values.vload([p, b * per + t, q * 16], wv)
                                        )
                    for i in T.unroll(mb):
                        for lane in T.vectorized(NB):
                            if ib * mb + i < rows and p * NB + lane < n_dim:
                                c[ib * mb + i, p * NB + lane] = acc[i * NB + lane]

    f = f.with_attr("global_symbol", name)
    # Opaque to Relax's FuseOps: nothing may be fused into a hand-scheduled kernel.
    return f.with_attr("op_pattern", 8).with_attr("tirx.is_scheduled", True)
