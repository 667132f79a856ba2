"""Scheduled CPU kernels (TE + ``s_tir`` schedules), for the ops where plain loops are too slow.

All of them take the weight in a *panel* layout (:mod:`llmc.backends.layouts`): ``[ceil(N/NB), K,
NB]``, so the innermost loop is a vector FMA over NB consecutive outputs for one input element,
with no horizontal reduction (which LLVM would not vectorize without fast-math). Rows of the
activation are processed ``MB`` at a time so each weight vector loaded is used ``MB`` times; the
panels are distributed over threads.
"""

from __future__ import annotations

from typing import Any

from tvm import s_tir, te, tirx

F32 = "float32"


def _finish(sch: s_tir.Schedule, name: str) -> tirx.PrimFunc:
    f = sch.mod["main"].with_attr("global_symbol", name)
    # Opaque to Relax's FuseOps: nothing may be fused into a hand-scheduled kernel.
    return f.with_attr("op_pattern", 8).with_attr("tirx.is_scheduled", True)


def _schedule_panel(sch: s_tir.Schedule, block: str, nb: int, mb: int) -> None:
    b = sch.get_sblock(block)
    m, n, k = sch.get_loops(b)
    no, ni = sch.split(n, [None, nb])
    mo, mi = sch.split(m, [None, mb])
    sch.reorder(no, mo, k, mi, ni)
    cw = sch.cache_write(b, 0, "local")
    sch.reverse_compute_at(cw, mo)
    sch.vectorize(ni)
    sch.unroll(mi)
    sch.parallel(no)
    sch.decompose_reduction(b, k)
    sch.vectorize(sch.get_loops(cw)[-1])


def panel_gemm(k_dim: int, n_dim: int, nb: int, x_dtype: str, w_dtype: str, mb: int = 4):
    """``C[M, N] = X[M, K] @ W.T`` with W in ``panel{nb}`` layout; float32 result."""
    m = tirx.Var("m", "int64")
    x = te.placeholder((m, k_dim), x_dtype, name="x")
    panels = (n_dim + nb - 1) // nb
    w = te.placeholder((panels, k_dim, nb), w_dtype, name="w")
    k = te.reduce_axis((0, k_dim), "k")
    c = te.compute(
        (m, n_dim),
        lambda i, j: te.sum(x[i, k].astype(F32) * w[j // nb, k, j % nb].astype(F32), axis=k),
        name="C",
    )
    sch = s_tir.Schedule(te.create_prim_func([x, w, c]))
    _schedule_panel(sch, "C", nb, mb)
    return _finish(sch, f"panel_gemm_k{k_dim}_n{n_dim}")


def panel_gemm_q4(
    k_dim: int, n_dim: int, nb: int, group: int, x_dtype: str, s_dtype: str, mb: int = 4
):
    """W4A16 on the CPU: codes ``[P, K/2, NB]`` (two k per byte), scales/offsets ``[P, K/g, NB]``."""
    m = tirx.Var("m", "int64")
    panels = (n_dim + nb - 1) // nb
    x = te.placeholder((m, k_dim), x_dtype, name="x")
    codes = te.placeholder((panels, k_dim // 2, nb), "uint8", name="codes")
    scale = te.placeholder((panels, k_dim // group, nb), s_dtype, name="scale")
    offset = te.placeholder((panels, k_dim // group, nb), s_dtype, name="offset")
    k = te.reduce_axis((0, k_dim), "k")

    def w(j: Any, kk: Any) -> Any:
        p, lane = j // nb, j % nb
        byte = codes[p, kk // 2, lane]
        nib = (byte >> ((kk % 2) * 4).astype("uint8")) & tirx.const(15, "uint8")
        g = kk // group
        return (nib.astype(F32) - offset[p, g, lane].astype(F32)) * scale[p, g, lane].astype(F32)

    c = te.compute((m, n_dim), lambda i, j: te.sum(x[i, k].astype(F32) * w(j, k), axis=k), name="C")
    sch = s_tir.Schedule(te.create_prim_func([x, codes, scale, offset, c]))
    _schedule_panel(sch, "C", nb, mb)
    return _finish(sch, f"panel_gemm_q4_k{k_dim}_n{n_dim}_g{group}")


def panel_gemm_nm(
    k_dim: int,
    n_dim: int,
    nb: int,
    n_keep: int,
    m_group: int,
    x_dtype: str,
    w_dtype: str,
    mb: int = 4,
):
    """N:M sparse on the CPU: values/positions ``[P, K*N/M, NB]``; only non-zeros are read."""
    m = tirx.Var("m", "int64")
    panels = (n_dim + nb - 1) // nb
    kk_dim = k_dim // m_group * n_keep
    x = te.placeholder((m, k_dim), x_dtype, name="x")
    vals = te.placeholder((panels, kk_dim, nb), w_dtype, name="values")
    idx = te.placeholder((panels, kk_dim, nb), "uint8", name="index")
    kk = te.reduce_axis((0, kk_dim), "kk")

    def term(i: Any, j: Any) -> Any:
        p, lane = j // nb, j % nb
        col = (kk // n_keep) * m_group + idx[p, kk, lane].astype("int64")
        return x[i, col].astype(F32) * vals[p, kk, lane].astype(F32)

    c = te.compute((m, n_dim), lambda i, j: te.sum(term(i, j), axis=kk), name="C")
    sch = s_tir.Schedule(te.create_prim_func([x, vals, idx, c]))
    _schedule_panel(sch, "C", nb, mb)
    return _finish(sch, f"panel_gemm_nm{n_keep}{m_group}_k{k_dim}_n{n_dim}")
