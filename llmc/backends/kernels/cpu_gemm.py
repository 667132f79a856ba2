"""Prefill GEMMs on the CPU (many rows): cache-blocked, register-blocked panel kernels.

Decode (one row) is bandwidth-bound and keeps :func:`llmc.backends.kernels.cpu.panel_gemm` and
:func:`llmc.backends.kernels.cpu_vnni.w8a8_vnni`; a prefill chunk of hundreds of rows is bound by
the vector FMA (or ``vpdpbusd``) throughput, so its kernel is scheduled the way BLIS/oneDNN
schedule a GEMM, over the same weight layouts (the artifact stores each weight once):

- the weight panel (``panel64``: ``[ceil(N/64), K, 64]``; VNNI: ``[ceil(N/64), K'/4, 64, 4]``) is
  walked in slices of ``KC`` input elements, so one slice (``KC x 64`` values) stays in L1/L2
  while every row block of the row chunk streams past it;
- a register block of ``MB`` rows x 64 outputs (``MB x 4`` zmm accumulators; ``MB = 6``: 24
  accumulators, 4 weight vectors and a broadcast = 29 of the 32 registers): each weight vector
  loaded is used ``MB`` times, each broadcast activation 4 times;
- the row chunks (``MC`` rows) and panels are one parallel loop, so short N still fills the cores
  (W8A8: a task is a chunk x up to ``PG`` panels, its activations shifted into u8 once per task);
- the partial sums of a tile live in the output between K slices (loaded, accumulated, stored:
  ``MB x 4`` vector loads and stores per ``KC x MB x 4`` FMAs).

Rows past the real count re-read the last real row and are never stored; columns past N (the
zero padding of the last panel) are computed and never stored.
"""

from __future__ import annotations

from tvm import tirx
from tvm.script import tirx as T

from llmc.backends.kernels.cpu import SCRATCH
from llmc.backends.kernels.memo import kernel_memo

F32 = "float32"
NB = 64
VPDPBUSD = "llvm.x86.avx512.vpdpbusd.512"
#: Register block rows (measured on Zen 4, bench/cpu_prefill_gemm.py).
MB = 6
#: Rows per parallel chunk (a multiple of MB).
MC = 96
#: Panels per parallel task of :func:`w8a8_prefill` (its activation chunk is shifted once per
#: task).
PG = 4
#: Input elements per K slice (float32: 256 x 64 x 4 B = 64 KiB of weight, in L2).
KC = 256


def _finish(f: tirx.PrimFunc, name: str) -> tirx.PrimFunc:
    f = f.with_attr("global_symbol", name)
    return f.with_attr("op_pattern", 8).with_attr("tirx.is_scheduled", True)


@kernel_memo
def gemm_prefill(
    k_dim: int,
    n_dim: int,
    x_dtype: str = F32,
    w_dtype: str = F32,
    mb: int = MB,
    mc: int = MC,
    kc: int = KC,
) -> tirx.PrimFunc:
    """``C[M, N] = X[M, K] @ W.T`` (float32 result) for a symbolic row count, W in ``panel64``."""
    panels = (n_dim + NB - 1) // NB
    kc = min(kc, k_dim)
    nkb = (k_dim + kc - 1) // kc
    mc = max(mc // mb, 1) * mb
    rows = tirx.Var("m", "int64")
    name = f"gemm_prefill_k{k_dim}_n{n_dim}"
    wv = w_dtype + "x16"

    @T.prim_func(private=True, s_tir=True)
    def f(x_h: T.handle, w: T.Buffer((panels, k_dim, NB), w_dtype), c_h: T.handle):
        T.func_attr({"tirx.noalias": True})
        x = T.match_buffer(x_h, (rows, k_dim), x_dtype)
        c = T.match_buffer(c_h, (rows, n_dim), F32)
        nchunks = (rows + mc - 1) // mc
        for t in T.parallel(panels * nchunks):
            with T.sblock("tile"):
                T.reads(x[0:rows, 0:k_dim], w[0:panels, 0:k_dim, 0:NB], c[0:rows, 0:n_dim])
                T.writes(c[0:rows, 0:n_dim])
                acc = T.alloc_buffer((mb * NB,), F32, scope=SCRATCH)
                p = t // nchunks
                r0 = (t % nchunks) * mc
                for kb in range(nkb):
                    for ib in range((T.min(mc, rows - r0) + mb - 1) // mb):
                        for r in T.unroll(mb):
                            for q in T.unroll(4):
                                if kb == 0:
                                    acc[T.ramp(r * NB + q * 16, 1, 16)] = T.broadcast(
                                        T.float32(0), 16
                                    )
                                else:
                                    for ln in T.vectorized(16):
                                        acc[r * NB + q * 16 + ln] = T.if_then_else(
                                            p * NB + q * 16 + ln < n_dim,
                                            c[
                                                T.min(r0 + ib * mb + r, rows - 1),
                                                T.min(p * NB + q * 16 + ln, n_dim - 1),
                                            ],
                                            T.float32(0),
                                        )
                        for k in range(T.min(kc, k_dim - kb * kc)):
                            kk = kb * kc + k
                            for r in T.unroll(mb):
                                xb = T.broadcast(
                                    T.Cast(F32, x[T.min(r0 + ib * mb + r, rows - 1), kk]), 16
                                )
                                for q in T.unroll(4):
                                    acc[T.ramp(r * NB + q * 16, 1, 16)] = acc[
                                        T.ramp(r * NB + q * 16, 1, 16)
                                    ] + xb * T.Cast("float32x16", w.vload([p, kk, q * 16], wv))
                        for r in T.unroll(mb):
                            for q in T.unroll(4):
                                for ln in T.vectorized(16):
                                    if r0 + ib * mb + r < rows and p * NB + q * 16 + ln < n_dim:
                                        c[r0 + ib * mb + r, p * NB + q * 16 + ln] = acc[
                                            r * NB + q * 16 + ln
                                        ]

    return _finish(f, name)


def supports_w8a8(k_dim: int) -> bool:
    """Whether :func:`w8a8_prefill` handles this K: whole 4-byte quads of activation codes (a
    quad is read as one int32; a ragged row end would read past the row)."""
    return k_dim % 4 == 0


@kernel_memo
def w8a8_prefill(k_dim: int, n_dim: int, mb: int = MB, mc: int = MC, pg: int = PG) -> tirx.PrimFunc:
    """W8A8 prefill on AVX-512 VNNI: ``act_quant``'s ``xq [M, K]`` int8 and ``xs [M]``, then the
    weights of :func:`llmc.backends.kernels.cpu_vnni.w8a8_vnni` (``codes [P, K/4, 64, 4]`` int8,
    ``wsum [P, 64]``, ``ws [P, 64]``), a symbolic row count.

    A parallel task takes a chunk of at most ``MC`` rows (the rows split evenly over the chunks)
    and up to ``PG`` panels. It first copies the chunk's activations into a scratch shifted into
    u8 (``x ^ 0x80 = x + 128``, 64 bytes per XOR); then per panel a register block of ``MB`` rows
    x 64 int32 accumulators; per k-quad 4 weight vectors (each used ``MB`` times) and, per row,
    one ``vpbroadcastd`` of 4 u8 bytes straight from the scratch (a load-port uop): the loop is
    24 ``vpdpbusd``, 10 loads and 3 loop instructions. Shifting in the loop instead (load to a
    general register, XOR, ``vpbroadcastd`` from it: a port-5 uop on Intel, the port pair
    ``vpdpbusd`` issues on) capped the loop at 24 of 30 uops on those ports (80%). The whole
    panel row of K (256 B per k-quad: 192 KiB at K = 3072) and the chunk (``MC x K`` bytes) stay
    in L2, so there is no K slicing: the accumulators stay in registers from the first k to the
    last and the output is written once."""
    assert supports_w8a8(k_dim), k_dim
    kq = k_dim // 4
    panels = (n_dim + NB - 1) // NB
    mc = max(mc // mb, 1) * mb
    kv = k_dim // 64 * 64
    rows = tirx.Var("m", "int64")

    @T.macro
    def task(xq, xs, codes, wsum, ws, c, t, nchunks, mce, pge):
        acc = T.alloc_buffer((mb * NB,), "int32", scope=SCRATCH)
        xu = T.alloc_buffer((mc * k_dim,), "int8", scope=SCRATCH)
        g = t // nchunks
        r0 = (t % nchunks) * mce
        nr = T.max(T.min(mce, rows - r0), 0)
        nblk = (nr + mb - 1) // mb
        for rr in range(nblk * mb):
            src = T.min(r0 + rr, rows - 1)
            for kb in range(kv // 64):
                for ln in T.vectorized(64):
                    xu[rr * k_dim + kb * 64 + ln] = T.bitwise_xor(
                        xq[src, kb * 64 + ln], T.int8(-128)
                    )
            for kt in range(k_dim - kv):
                xu[rr * k_dim + kv + kt] = T.bitwise_xor(xq[src, kv + kt], T.int8(-128))
        for pp in range(T.min(pge, panels - g * pge)):
            p = g * pge + pp
            for ib in range(nblk):
                for a in T.unroll(mb * 4):
                    acc[T.ramp(a * 16, 1, 16)] = T.broadcast(T.int32(0), 16)
                for kb in range(kq):
                    for r in T.unroll(mb):
                        xb = T.reinterpret(
                            T.broadcast(
                                T.reinterpret(
                                    xu.vload([(ib * mb + r) * k_dim + kb * 4], "int8x4"),
                                    dtype="int32",
                                ),
                                16,
                            ),
                            dtype="int8x64",
                        )
                        for q in T.unroll(4):
                            acc[T.ramp(r * NB + q * 16, 1, 16)] = T.call_llvm_pure_intrin(
                                T.llvm_lookup_intrinsic_id(VPDPBUSD),
                                acc[T.ramp(r * NB + q * 16, 1, 16)],
                                xb,
                                codes.vload([p, kb, q * 16, 0], "int8x64"),
                                dtype="int32x16",
                            )
                for r in T.unroll(mb):
                    for q in T.unroll(4):
                        for lane in T.vectorized(16):
                            if ib * mb + r < nr and p * NB + q * 16 + lane < n_dim:
                                c[r0 + ib * mb + r, p * NB + q * 16 + lane] = (
                                    T.Cast(
                                        F32,
                                        acc[r * NB + q * 16 + lane] - wsum[p, q * 16 + lane] * 128,
                                    )
                                    * xs[r0 + ib * mb + r]
                                    * ws[p, q * 16 + lane]
                                )

    return w8a8_prefill_frame(
        k_dim, n_dim, rows, mb, mc, pg, task, f"w8a8_prefill_k{k_dim}_n{n_dim}"
    )


def w8a8_prefill_frame(
    k_dim: int, n_dim: int, rows: tirx.Var, mb: int, mc: int, pg: int, task: object, name: str
) -> tirx.PrimFunc:
    """The PrimFunc both W8A8 prefill kernels (:func:`w8a8_prefill`; AMX:
    :func:`llmc.backends.kernels.cpu_amx.w8a8_prefill_amx`) share: the arguments (``xq [rows,
    K]`` int8, ``xs [rows]``, the VNNI panels ``codes``, ``wsum``, ``ws``; ``c [rows, N]``
    float32), the split of the rows into chunks (whole ``mb``-row blocks, at most ``mc``, evened
    out) and of the panels into groups, and one parallel loop over (group, chunk) tasks, each
    the macro ``task(xq, xs, codes, wsum, ws, c, t, nchunks, mce, pge)``: task ``t`` of
    ``nchunks`` chunks of ``mce`` rows, ``pge`` panels per group."""
    kq = k_dim // 4
    panels = (n_dim + NB - 1) // NB

    @T.prim_func(private=True, s_tir=True)
    def f(
        xq_h: T.handle,
        xs_h: T.handle,
        codes: T.Buffer((panels, kq, NB, 4), "int8"),
        wsum: T.Buffer((panels, NB), "int32"),
        ws: T.Buffer((panels, NB), F32),
        c_h: T.handle,
    ):
        T.func_attr({"tirx.noalias": True})
        xq = T.match_buffer(xq_h, (rows, k_dim), "int8")
        xs = T.match_buffer(xs_h, (rows,), F32)
        c = T.match_buffer(c_h, (rows, n_dim), F32)
        nchunks = (rows + mc - 1) // mc
        # rows per chunk, evened out over the chunks (whole register blocks, at most mc)
        mce = ((rows + nchunks - 1) // nchunks + mb - 1) // mb * mb
        # panels per task: PG, or fewer while that leaves under 8 tasks (a short prefill)
        pge = T.max(T.min(T.min(pg, panels), nchunks * panels // 8), 1)
        groups = (panels + pge - 1) // pge
        for t in T.parallel(nchunks * groups):
            with T.sblock("tile"):
                T.reads(xq[0:rows, 0:k_dim], codes[0:panels, 0:kq, 0:NB, 0:4], xs[0:rows])
                T.writes(c[0:rows, 0:n_dim])
                task(xq, xs, codes, wsum, ws, c, t, nchunks, mce, pge)

    return _finish(f, name)

    return _finish(f, name)


__all__ = [
    "KC",
    "MB",
    "MC",
    "PG",
    "gemm_prefill",
    "supports_w8a8",
    "w8a8_prefill",
    "w8a8_prefill_frame",
]
