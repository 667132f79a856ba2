"""Routed mixture-of-experts kernels for the CPU (TIR): only the chosen experts' weights are read.

The ``moe`` op (:mod:`llmc.ir.ops_moe`) in three kernels, called by the ``cpu.moe.routed`` rule
(:mod:`llmc.backends.rules_moe`):

- :func:`moe_route`: per row (parallel), the router logits, their softmax in float32 and the
  ``top_k`` largest probabilities by selection (ties by the lower expert index, like
  ``torch.topk`` in the reference), normalized when asked; then, serially, the ``N * top_k``
  (row, slot) pairs counted per expert (``off``, an exclusive prefix sum of ``E + 1`` entries)
  and listed grouped by expert, stable (``perm``: pair ids, pair = ``row * top_k + slot``).
- :func:`moe_gemm`: the grouped GEMM ``out[pair] = src[pair // div] @ W[e].T`` for every pair of
  expert ``e``, looping over experts and, inside one, over register blocks of ``mb`` of its
  pairs: each weight vector loaded is used ``mb`` times (prefill), and an expert nobody chose
  costs nothing (decode reads ``top_k`` of ``E`` experts' weights). The weight is in the
  ``moe.panel{NB}`` layout (:mod:`llmc.backends.layouts`, ``[E, ceil(O/NB), K, NB]``), so the
  inner loop is a vector FMA over NB outputs (no horizontal reduction); threads take output
  panels. Rows of a block past the expert's last pair re-read that pair and are not stored.

The gated activation and the weighted sum over a row's ``top_k`` results are elementwise Relax.
"""

from __future__ import annotations

from tvm.script import tirx as T

from llmc.backends.kernels.cpu import SCRATCH
from llmc.backends.kernels.memo import kernel_memo


@kernel_memo
def moe_route(e: int, h: int, k: int, normalize: bool, x_dtype: str, r_dtype: str):
    """``(x [N, H], router [E, H]) -> idx [N, k] i32, w [N, k] f32, perm [N*k] i32,
    off [E + 1] i32`` (see the module docstring)."""

    # fmt: off
    @T.prim_func(s_tir=True)
    def route(x_h: T.handle, r_h: T.handle, idx_h: T.handle, w_h: T.handle, perm_h: T.handle, off_h: T.handle):
        T.func_attr({"tirx.is_scheduled": True, "tirx.noalias": True})
        N = T.int64()
        X = T.match_buffer(x_h, (N, h), x_dtype)
        R = T.match_buffer(r_h, (e, h), r_dtype)
        IDX = T.match_buffer(idx_h, (N, k), "int32")
        W = T.match_buffer(w_h, (N, k), "float32")
        PERM = T.match_buffer(perm_h, (N * k,), "int32")
        OFF = T.match_buffer(off_h, (e + 1,), "int32")
        for n in T.parallel(N):
            with T.sblock("route"):
                T.reads()
                T.writes()
                p = T.sblock_alloc_buffer((e,), "float32", scope=SCRATCH)
                st = T.sblock_alloc_buffer((3,), "float32", scope=SCRATCH)  # max, sum, best
                bi = T.sblock_alloc_buffer((1,), "int32", scope=SCRATCH)
                for ei in T.serial(e):
                    p[ei] = T.float32(0)
                    for hi in T.serial(h):
                        p[ei] = p[ei] + T.Cast("float32", X[n, hi]) * T.Cast("float32", R[ei, hi])
                st[0] = p[0]
                for ei in T.serial(e):
                    st[0] = T.max(st[0], p[ei])
                st[1] = T.float32(0)
                for ei in T.serial(e):
                    p[ei] = T.exp(p[ei] - st[0])
                    st[1] = st[1] + p[ei]
                for ei in T.serial(e):
                    p[ei] = p[ei] / st[1]
                st[1] = T.float32(0)
                for j in T.serial(k):
                    st[2] = T.float32(-1)
                    bi[0] = 0
                    for ei in T.serial(e):
                        if p[ei] > st[2]:
                            st[2] = p[ei]
                            bi[0] = T.Cast("int32", ei)
                    IDX[n, j] = bi[0]
                    W[n, j] = st[2]
                    st[1] = st[1] + st[2]
                    p[bi[0]] = T.float32(-2)  # probabilities are >= 0: never chosen again
                if normalize:
                    for j in T.serial(k):
                        W[n, j] = W[n, j] / st[1]
        with T.sblock("group"):
            T.reads()
            T.writes()
            cur = T.sblock_alloc_buffer((e,), "int32", scope=SCRATCH)
            for ei in T.serial(e + 1):
                OFF[ei] = 0
            for t in T.serial(N * k):
                OFF[IDX[t // k, t % k] + 1] = OFF[IDX[t // k, t % k] + 1] + 1
            for ei in T.serial(e):
                OFF[ei + 1] = OFF[ei + 1] + OFF[ei]
                cur[ei] = OFF[ei]
            for t in T.serial(N * k):
                PERM[cur[IDX[t // k, t % k]]] = T.Cast("int32", t)
                cur[IDX[t // k, t % k]] = cur[IDX[t // k, t % k]] + 1
    # fmt: on
    return route.with_attr("global_symbol", f"moe_route_e{e}_h{h}_k{k}")


@kernel_memo
def moe_gemm(
    e: int, k_dim: int, o_dim: int, nb: int, div: int, mb: int, s_dtype: str, w_dtype: str
):
    """``(src [R, K], perm [P] i32, off [E + 1] i32, w [E, ceil(O/nb), K, nb]) -> out [P, O']``
    (float32, ``O'`` = O rounded up to whole panels): pair ``q`` of expert ``x`` gets
    ``out[q] = src[q // div] @ W[x].T``. ``mb`` pairs per register block (1 for decode)."""
    panels = (o_dim + nb - 1) // nb

    # fmt: off
    @T.prim_func(s_tir=True)
    def gemm(src_h: T.handle, perm_h: T.handle, off_h: T.handle, w_h: T.handle, out_h: T.handle):
        T.func_attr({"tirx.is_scheduled": True, "tirx.noalias": True})
        R = T.int64()
        P = T.int64()
        SRC = T.match_buffer(src_h, (R, k_dim), s_dtype)
        PERM = T.match_buffer(perm_h, (P,), "int32")
        OFF = T.match_buffer(off_h, (e + 1,), "int32")
        W = T.match_buffer(w_h, (e, panels, k_dim, nb), w_dtype)
        OUT = T.match_buffer(out_h, (P, panels * nb), "float32")
        for jo in T.parallel(panels):
            with T.sblock("gemm"):
                T.reads()
                T.writes()
                acc = T.sblock_alloc_buffer((mb, nb), "float32", scope=SCRATCH)
                rows = T.sblock_alloc_buffer((mb,), "int32", scope=SCRATCH)
                for x in T.serial(e):
                    for t in T.serial((OFF[x + 1] - OFF[x] + mb - 1) // mb):
                        for i in T.unroll(mb):
                            rows[i] = PERM[T.min(OFF[x] + t * mb + i, OFF[x + 1] - 1)]
                            for ln in T.vectorized(nb):
                                acc[i, ln] = T.float32(0)
                        for kk in T.serial(k_dim):
                            for i in T.unroll(mb):
                                for ln in T.vectorized(nb):
                                    acc[i, ln] = acc[i, ln] + T.Cast("float32", SRC[rows[i] // div, kk]) * T.Cast("float32", W[x, jo, kk, ln])
                        for i in T.unroll(mb):
                            if OFF[x] + t * mb + i < OFF[x + 1]:
                                for ln in T.vectorized(nb):
                                    OUT[rows[i], jo * nb + ln] = acc[i, ln]
    # fmt: on
    name = f"moe_gemm_e{e}_k{k_dim}_o{o_dim}_d{div}_m{mb}"
    return gemm.with_attr("global_symbol", name)
