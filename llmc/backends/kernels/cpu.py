"""Scheduled CPU kernels (TE + ``s_tir`` schedules), for the ops where plain loops are too slow.

All of them take the weight in a *panel* layout (:mod:`llmc.backends.layouts`): ``[ceil(N/NB), K,
NB]``, so the innermost loop is a vector FMA over NB consecutive outputs for one input element,
with no horizontal reduction (which LLVM would not vectorize without fast-math). Rows of the
activation are processed ``MB`` at a time so each weight vector loaded is used ``MB`` times; the
panels are distributed over threads.

With a symbolic row count the rows are padded to a multiple of ``MB`` *inside* the kernel (the
padded rows re-read the last real row and are never stored), so the register block has no
predicate in its inner loop; decode (one row, static) uses ``MB = 1``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tvm import s_tir, te, tirx

F32 = "float32"


def row_block(m: int | None) -> int:
    """Rows per register block: 1 for decode (one static row), 4 otherwise."""
    return 1 if m == 1 else 4


def _gemm(
    name: str,
    m: int | None,
    n_dim: int,
    red: int,
    nb: int,
    inputs: list[te.Tensor],
    x: Callable[[Any], te.Tensor],
    term: Callable[[Any, Any, Any], Any],
) -> tirx.PrimFunc:
    """``C[i, j] = sum_r term(row, j, r)`` (float32), scheduled as a panel GEMM.

    ``x(rows)`` declares the activation placeholder for the row extent; ``term`` gets the row
    index already clamped to the real rows.
    """
    mb = row_block(m)
    rows: Any = tirx.Var("m", "int64") if m is None else m
    xt = x(rows)
    r = te.reduce_axis((0, red), "r")
    if mb == 1:
        c = te.compute((rows, n_dim), lambda i, j: te.sum(term(i, j, r), axis=r), name="C")
        sch = s_tir.Schedule(te.create_prim_func([xt, *inputs, c]))
        b = sch.get_sblock("C")
        i, j, k = sch.get_loops(b)
        jo, ji = sch.split(j, [None, nb])
        sch.reorder(jo, i, k, ji)
        cw = sch.cache_write(b, 0, "local")
        sch.reverse_compute_at(cw, i)
        sch.vectorize(ji)
        sch.parallel(jo)
        sch.decompose_reduction(b, k)
        sch.vectorize(sch.get_loops(cw)[-1])
    else:
        padded = (rows + mb - 1) // mb * mb
        last = rows - 1
        cp = te.compute(
            (padded, n_dim),
            lambda i, j: te.sum(term(tirx.min(i, last), j, r), axis=r),
            name="acc",
        )
        c = te.compute((rows, n_dim), lambda i, j: cp[i, j], name="C")
        sch = s_tir.Schedule(te.create_prim_func([xt, *inputs, c]))
        bc = sch.get_sblock("C")
        i, j = sch.get_loops(bc)
        jo, ji = sch.split(j, [None, nb])
        io, ii = sch.split(i, [None, mb])
        sch.reorder(jo, io, ii, ji)
        bp = sch.get_sblock("acc")
        sch.set_scope(bp, 0, "local")
        sch.compute_at(bp, io)
        pi, pj, pk = sch.get_loops(bp)[-3:]
        pjo, pji = sch.split(pj, [None, nb])
        sch.reorder(pjo, pk, pi, pji)
        sch.vectorize(pji)
        sch.unroll(pi)
        sch.vectorize(ji)
        sch.parallel(jo)
        sch.decompose_reduction(bp, pk)
    f = sch.mod["main"].with_attr("global_symbol", name)
    # Opaque to Relax's FuseOps: nothing may be fused into a hand-scheduled kernel.
    return f.with_attr("op_pattern", 8).with_attr("tirx.is_scheduled", True)


def panel_gemm(
    k_dim: int, n_dim: int, nb: int, x_dtype: str, w_dtype: str, m: int | None = None
) -> tirx.PrimFunc:
    """``C[M, N] = X[M, K] @ W.T`` with W in ``panel{nb}`` layout; float32 result."""
    panels = (n_dim + nb - 1) // nb
    w = te.placeholder((panels, k_dim, nb), w_dtype, name="w")
    box: dict[str, te.Tensor] = {}

    def x(rows: Any) -> te.Tensor:
        box["x"] = te.placeholder((rows, k_dim), x_dtype, name="x")
        return box["x"]

    def term(i: Any, j: Any, k: Any) -> Any:
        return box["x"][i, k].astype(F32) * w[j // nb, k, j % nb].astype(F32)

    return _gemm(f"panel_gemm_k{k_dim}_n{n_dim}", m, n_dim, k_dim, nb, [w], x, term)


def panel_gemm_q4(
    k_dim: int,
    n_dim: int,
    nb: int,
    group: int,
    x_dtype: str,
    s_dtype: str,
    m: int | None = None,
) -> tirx.PrimFunc:
    """W4A16 on the CPU: codes ``[P, K/2, NB]`` (two k per byte, low nibble = even k), scales and
    offsets ``[P, K/g, NB]``: ``w = (nibble - offset) * scale``."""
    panels = (n_dim + nb - 1) // nb
    codes = te.placeholder((panels, k_dim // 2, nb), "uint8", name="codes")
    scale = te.placeholder((panels, k_dim // group, nb), s_dtype, name="scale")
    offset = te.placeholder((panels, k_dim // group, nb), s_dtype, name="offset")
    box: dict[str, te.Tensor] = {}

    def x(rows: Any) -> te.Tensor:
        box["x"] = te.placeholder((rows, k_dim), x_dtype, name="x")
        return box["x"]

    def term(i: Any, j: Any, k: Any) -> Any:
        p, lane = j // nb, j % nb
        byte = codes[p, k // 2, lane]
        nib = (byte >> ((k % 2) * 4).astype("uint8")) & tirx.const(15, "uint8")
        g = k // group
        w = (nib.astype(F32) - offset[p, g, lane].astype(F32)) * scale[p, g, lane].astype(F32)
        return box["x"][i, k].astype(F32) * w

    return _gemm(
        f"panel_gemm_q4_k{k_dim}_n{n_dim}_g{group}",
        m,
        n_dim,
        k_dim,
        nb,
        [codes, scale, offset],
        x,
        term,
    )


def panel_gemm_nm(
    k_dim: int,
    n_dim: int,
    nb: int,
    n_keep: int,
    m_group: int,
    x_dtype: str,
    w_dtype: str,
    m: int | None = None,
) -> tirx.PrimFunc:
    """N:M sparse on the CPU: values/positions ``[P, K*N/M, NB]``; only the stored non-zeros are
    multiplied (the activation is gathered by position), the dense weight never exists."""
    panels = (n_dim + nb - 1) // nb
    kk_dim = k_dim // m_group * n_keep
    vals = te.placeholder((panels, kk_dim, nb), w_dtype, name="values")
    idx = te.placeholder((panels, kk_dim, nb), "uint8", name="index")
    box: dict[str, te.Tensor] = {}

    def x(rows: Any) -> te.Tensor:
        box["x"] = te.placeholder((rows, k_dim), x_dtype, name="x")
        return box["x"]

    def term(i: Any, j: Any, kk: Any) -> Any:
        p, lane = j // nb, j % nb
        col = (kk // n_keep) * m_group + idx[p, kk, lane].astype("int64")
        return box["x"][i, col].astype(F32) * vals[p, kk, lane].astype(F32)

    return _gemm(
        f"panel_gemm_nm{n_keep}{m_group}_k{k_dim}_n{n_dim}",
        m,
        n_dim,
        kk_dim,
        nb,
        [vals, idx],
        x,
        term,
    )


def panel_gemm_q8(
    k_dim: int,
    n_dim: int,
    nb: int,
    group: int,
    x_dtype: str,
    s_dtype: str,
    m: int | None = None,
) -> tirx.PrimFunc:
    """5..8-bit weight-only on the CPU: int8 codes ``[P, K, NB]``, scales and offsets
    ``[P, K/g, NB]``: ``w = (code - offset) * scale``."""
    panels = (n_dim + nb - 1) // nb
    codes = te.placeholder((panels, k_dim, nb), "int8", name="codes")
    scale = te.placeholder((panels, k_dim // group, nb), s_dtype, name="scale")
    offset = te.placeholder((panels, k_dim // group, nb), s_dtype, name="offset")
    box: dict[str, te.Tensor] = {}

    def x(rows: Any) -> te.Tensor:
        box["x"] = te.placeholder((rows, k_dim), x_dtype, name="x")
        return box["x"]

    def term(i: Any, j: Any, k: Any) -> Any:
        p, lane = j // nb, j % nb
        g = k // group
        w = (codes[p, k, lane].astype(F32) - offset[p, g, lane].astype(F32)) * scale[
            p, g, lane
        ].astype(F32)
        return box["x"][i, k].astype(F32) * w

    return _gemm(
        f"panel_gemm_q8_k{k_dim}_n{n_dim}_g{group}",
        m,
        n_dim,
        k_dim,
        nb,
        [codes, scale, offset],
        x,
        term,
    )
