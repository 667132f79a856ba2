"""W8A8 prefill on Intel AMX (``tdpbssd`` tile products), for CPUs with ``amx_int8``.

Same arguments and result as :func:`llmc.backends.kernels.cpu_gemm.w8a8_prefill` (``act_quant``'s
``xq [M, K]`` int8 and ``xs [M]``, the VNNI weight panels ``codes [P, K/4, 64, 4]`` int8,
``wsum [P, 64]`` int32, ``ws [P, 64]`` float32; float32 ``[M, N]`` out), bit-identical to it: the
int32 sums are exact either way, and the epilogue is the same float expression on them.

The VNNI panel layout is already AMX's B-tile layout: for one panel, 16 consecutive k-quads x
16 columns x 4 bytes are 16 rows of 64 bytes at a stride of 256 bytes (``tileloadd`` with stride
256), so the artifact's weights are unchanged. Tiles (palette 1, all 16 rows x 64 bytes):
C = tiles 0-3 (a 32-row x 32-column int32 block), A = tiles 4-5 (32 rows x 64 int8 activations),
B = tiles 6-7 (64 k x 32 columns of weights); per 64 input elements 2 A + 2 B loads and 4
``tdpbssd`` (signed x signed, each 16 x 16 x 64 multiply-adds). The products are signed, so
the int32 sums are the VNNI kernel's ``acc - 128 * wsum`` already (``wsum`` is unused here).

A parallel task takes a chunk of at most ``MC`` rows and up to ``PG`` panels, like the VNNI
kernel, and walks its 32-row blocks outermost (a block's activations stay in L1 over the task's
panels). A whole block with K a multiple of 64 loads its A tiles straight from ``xq`` (stride
K); the last, partial block, or any block when K is not a multiple of 64, is first copied into a
32 x K64 scratch (rows past the end repeat the last real row and are never stored; the K tail is
zero). A K tail's last k-quads of each panel are copied into a zero-padded 16 x 256 byte scratch
(a tile load never reads past the weights). Per 32-column half of the panel the four C tiles are
stored into a 32 x 64 int32 scratch, then one epilogue per 32 x 64 block: ``acc * xs * ws``,
stored for real rows and columns only.

Measured limits (``bench/cpu_prefill_gemm.py``, docs/backends.md "W8A8 prefill on AMX tiles"):
the tile loop alone, with A and B tiles re-read from L1 and no epilogue, reaches ~73% of the
same-moment ``tdpbusd`` probe; with the real A and B addresses ~48% (4 KB of tile loads per four
``tdpbssd``, B from L2), with the float32 epilogue ~30%, the output stores' cache misses being
most of that last step. oneDNN's AMX matmul measures level with it on the same shapes.

The process must hold the AMX tile state (Linux ``arch_prctl(ARCH_REQ_XCOMP_PERM,
XFEATURE_XTILEDATA)``) before the first call, or the first tile instruction faults:
:func:`llmc.targets.cpu_isa.request_amx` asks for it, and :mod:`llmc.runtime.tvm_runner` calls it
before loading an artifact whose ISA flags include ``amx_int8``.
"""

from __future__ import annotations

from tvm import tirx
from tvm.script import tirx as T

from llmc.backends.kernels.cpu import SCRATCH
from llmc.backends.kernels.cpu_gemm import w8a8_prefill_frame
from llmc.backends.kernels.memo import kernel_memo

F32 = "float32"
NB = 64
#: Rows per register(tile) block: two 16-row A tiles.
MB = 32
#: Rows per parallel chunk (a multiple of MB).
MC = 128
#: Panels per parallel task.
PG = 4


def _i(name: str, *args):
    return T.call_llvm_intrin("void", name, *args)


def _zero(t: int):
    return _i("llvm.x86.tilezero", T.int8(t))


def _load(t: int, ptr, stride):
    return _i("llvm.x86.tileloadd64", T.int8(t), ptr, T.int64(stride))


def _store(t: int, ptr, stride):
    return _i("llvm.x86.tilestored64", T.int8(t), ptr, T.int64(stride))


def _dp(c: int, a: int, b: int):
    return _i("llvm.x86.tdpbssd", T.int8(c), T.int8(a), T.int8(b))


def supports(k_dim: int) -> bool:
    """Whether :func:`w8a8_prefill_amx` handles this K (whole k-quads, as the VNNI kernel)."""
    return k_dim % 4 == 0


@kernel_memo
def w8a8_prefill_amx(
    k_dim: int, n_dim: int, mc: int = MC, pg: int = PG, name: str | None = None
) -> tirx.PrimFunc:
    """W8A8 prefill with AMX tiles (see the module docstring); a symbolic row count."""
    assert supports(k_dim), k_dim
    mb = MB
    kq = k_dim // 4
    panels = (n_dim + NB - 1) // NB
    mc = max(mc // mb, 1) * mb
    kv = k_dim // 64 * 64  # the K covered by whole 64-byte tiles
    k64 = (k_dim + 63) // 64 * 64  # the scratch row (zero-padded)
    nkb = kv // 64
    tail = k_dim - kv  # bytes in the last, partial tile (a multiple of 4)
    rows = tirx.Var("m", "int64")
    name = name or f"w8a8_prefill_amx_k{k_dim}_n{n_dim}"

    @T.macro
    def task(xq, xs, codes, wsum, ws, c, t, nchunks, mce, pge):
        cfg = T.alloc_buffer((64,), "uint8", scope="local")
        acc = T.alloc_buffer((mb * NB,), "int32", scope=SCRATCH)
        xp = T.alloc_buffer((mb * k64,), "int8", scope=SCRATCH)
        bt = T.alloc_buffer((16 * NB * 4,), "int8", scope=SCRATCH)
        # palette 1, 8 tiles of 16 rows x 64 bytes (bytes 16.. colsb u16, 48.. rows u8)
        for i in range(64):
            cfg[i] = T.uint8(0)
        cfg[0] = T.uint8(1)
        for j in range(8):
            cfg[16 + 2 * j] = T.uint8(64)
            cfg[48 + j] = T.uint8(16)
        T.evaluate(_i("llvm.x86.ldtilecfg", T.address_of(cfg[0])))
        g = t // nchunks
        r0 = (t % nchunks) * mce
        nr = T.max(T.min(mce, rows - r0), 0)
        npp = T.min(pge, panels - g * pge)
        for ib in range((nr + mb - 1) // mb):
            row = r0 + ib * mb
            if tail > 0 or row + mb > rows:
                for rr in range(mb):
                    for kk in T.vectorized(k64):
                        xp[rr * k64 + kk] = T.if_then_else(
                            kk < k_dim,
                            xq[T.min(row + rr, rows - 1), T.min(kk, k_dim - 1)],
                            T.int8(0),
                        )
            for pp in range(npp):
                p = g * pge + pp
                if tail > 0:
                    for kt in range(16):
                        for ln in T.vectorized(NB * 4):
                            bt[kt * NB * 4 + ln] = T.if_then_else(
                                kt * 4 < tail,
                                codes[p, T.min(kv // 4 + kt, kq - 1), ln // 4, ln % 4],
                                T.int8(0),
                            )
                for h in range(2):
                    T.evaluate(_zero(0))
                    T.evaluate(_zero(1))
                    T.evaluate(_zero(2))
                    T.evaluate(_zero(3))
                    for kb in range(nkb):
                        if tail > 0 or row + mb > rows:
                            T.evaluate(_load(4, T.address_of(xp[kb * 64]), k64))
                            T.evaluate(_load(5, T.address_of(xp[16 * k64 + kb * 64]), k64))
                        else:
                            T.evaluate(_load(4, T.address_of(xq[row, kb * 64]), k_dim))
                            T.evaluate(_load(5, T.address_of(xq[row + 16, kb * 64]), k_dim))
                        T.evaluate(_load(6, T.address_of(codes[p, kb * 16, h * 32, 0]), 256))
                        T.evaluate(_load(7, T.address_of(codes[p, kb * 16, h * 32 + 16, 0]), 256))
                        T.evaluate(_dp(0, 4, 6))
                        T.evaluate(_dp(1, 4, 7))
                        T.evaluate(_dp(2, 5, 6))
                        T.evaluate(_dp(3, 5, 7))
                    if tail > 0:
                        T.evaluate(_load(4, T.address_of(xp[kv]), k64))
                        T.evaluate(_load(5, T.address_of(xp[16 * k64 + kv]), k64))
                        T.evaluate(_load(6, T.address_of(bt[h * 128]), 256))
                        T.evaluate(_load(7, T.address_of(bt[h * 128 + 64]), 256))
                        T.evaluate(_dp(0, 4, 6))
                        T.evaluate(_dp(1, 4, 7))
                        T.evaluate(_dp(2, 5, 6))
                        T.evaluate(_dp(3, 5, 7))
                    T.evaluate(_store(0, T.address_of(acc[h * 32]), 256))
                    T.evaluate(_store(1, T.address_of(acc[h * 32 + 16]), 256))
                    T.evaluate(_store(2, T.address_of(acc[16 * NB + h * 32]), 256))
                    T.evaluate(_store(3, T.address_of(acc[16 * NB + h * 32 + 16]), 256))
                for r in range(mb):
                    for q in T.unroll(4):
                        for lane in T.vectorized(16):
                            if ib * mb + r < nr and p * NB + q * 16 + lane < n_dim:
                                c[row + r, p * NB + q * 16 + lane] = (
                                    T.Cast(F32, acc[r * NB + q * 16 + lane])
                                    * xs[row + r]
                                    * ws[p, q * 16 + lane]
                                )
        T.evaluate(_i("llvm.x86.tilerelease"))

    return w8a8_prefill_frame(k_dim, n_dim, rows, mb, mc, pg, task, name)


__all__ = ["MB", "MC", "PG", "supports", "w8a8_prefill_amx"]
