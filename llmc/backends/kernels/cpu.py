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

#: Storage scope of the CPU kernels' small scratch arrays (accumulators, partial results).
#: Not ``"local"``: TVM's ``LowerTVMBuiltin`` leaves an allocation on the stack only when its
#: scope is ``"global"`` and it is under 1 KiB; any other scope is served by
#: ``TVMBackendAllocWorkspace`` (a call into the runtime's workspace pool, and one to free it,
#: per parallel task of every call). On a CPU both scopes are the same memory. Measured in
#: docs/backends.md, "VM overhead per decode step". Likewise ``x = expr`` in a ``T.macro``
#: makes a one-element ``local`` buffer: the kernels bind such names with ``T.meta_var``.
SCRATCH = "global"


def row_block(m: int | None, nb: int = 64, vector_bits: int = 512) -> int:
    """Rows per register block: 1 for decode (one static row); otherwise as many rows (4 at
    most) as keep the accumulators (``rows * nb`` float32 lanes) within half the vector register
    file, the other half holding weight vectors and broadcasts. AVX-512 (32 registers of 16
    lanes), NB = 64: 4 rows; AVX2 (16 registers of 8 lanes): 1 row (two rows, 16 accumulators,
    measured slower on Zen 3: 54 vs 66 GFLOP/s at K = 768, N = 3072, M = 128)."""
    if m == 1:
        return 1
    lanes = max(vector_bits // 32, 1)
    regs = 32 if vector_bits >= 512 else 16
    per_row = max(nb // lanes, 1)
    for mb in (4, 2):
        if mb * per_row <= regs // 2:
            return mb
    return 1


def _gemm(
    name: str,
    m: int | None,
    n_dim: int,
    red: int,
    nb: int,
    x_shape: tuple[int, str],
    inputs: list[te.Tensor],
    term: Callable[[te.Tensor, Any, Any, Any], Any],
    vector_bits: int = 512,
) -> tirx.PrimFunc:
    """``C[i, j] = sum_r term(x, row, j, r)`` (float32), scheduled as a panel GEMM.

    ``x_shape = (K, dtype)`` declares the activation placeholder ``x [M, K]``; ``term`` gets it
    and the row index already clamped to the real rows; ``vector_bits`` is the widest vector
    register the target has (it sizes the register block, :func:`row_block`).
    """
    mb = row_block(m, nb, vector_bits)
    rows: Any = tirx.Var("m", "int64") if m is None else m
    xt = te.placeholder((rows, x_shape[0]), x_shape[1], name="x")
    r = te.reduce_axis((0, red), "r")
    # The accumulator covers whole register blocks: rows rounded up to MB (padded rows re-read
    # the last real row) and columns up to whole panels (the padding lanes of the last panel
    # hold zeros). Only the store is predicated; a predicate in the FMA loop would keep LLVM from
    # vectorizing it (one N not a multiple of NB, e.g. a 50257-word LM head, made the whole
    # kernel scalar).
    padded = rows if mb == 1 else (rows + mb - 1) // mb * mb
    last = rows - 1
    n_pad = (n_dim + nb - 1) // nb * nb
    cp = te.compute(
        (padded, n_pad),
        lambda i, j: te.sum(term(xt, i if mb == 1 else tirx.min(i, last), j, r), axis=r),
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
    own = sch.get_loops(bp)[2:]  # below (jo, io); a unit row loop (decode) is elided
    pi, pj, pk = own if len(own) == 3 else (None, *own)
    pjo, pji = sch.split(pj, [None, nb])
    sch.reorder(*([pjo, pk, pi, pji] if pi is not None else [pjo, pk, pji]))
    sch.vectorize(pji)
    if pi is not None:
        sch.unroll(pi)
    sch.vectorize(ji)
    sch.parallel(jo)
    sch.decompose_reduction(bp, pk)
    f = sch.mod["main"].with_attr("global_symbol", name)
    # Opaque to Relax's FuseOps: nothing may be fused into a hand-scheduled kernel.
    return f.with_attr("op_pattern", 8).with_attr("tirx.is_scheduled", True)


def panel_gemm(
    k_dim: int,
    n_dim: int,
    nb: int,
    x_dtype: str,
    w_dtype: str,
    m: int | None = None,
    vector_bits: int = 512,
) -> tirx.PrimFunc:
    """``C[M, N] = X[M, K] @ W.T`` with W in ``panel{nb}`` layout; float32 result."""
    panels = (n_dim + nb - 1) // nb
    w = te.placeholder((panels, k_dim, nb), w_dtype, name="w")

    def term(x: te.Tensor, i: Any, j: Any, k: Any) -> Any:
        return x[i, k].astype(F32) * w[j // nb, k, j % nb].astype(F32)

    name = f"panel_gemm_k{k_dim}_n{n_dim}"
    return _gemm(name, m, n_dim, k_dim, nb, (k_dim, x_dtype), [w], term, vector_bits)


def panel_gemm_q4(
    k_dim: int,
    n_dim: int,
    nb: int,
    group: int,
    x_dtype: str,
    s_dtype: str,
    m: int | None = None,
    vector_bits: int = 512,
) -> tirx.PrimFunc:
    """W4A16 on the CPU: codes ``[P, K/2, NB]`` (two k per byte, low nibble = even k), scales and
    offsets ``[P, K/g, NB]``: ``w = (nibble - offset) * scale``."""
    codes = te.placeholder(((n_dim + nb - 1) // nb, k_dim // 2, nb), "uint8", name="codes")

    def nibble(p: Any, k: Any, lane: Any) -> Any:
        byte = codes[p, k // 2, lane]
        return (byte >> ((k % 2) * 4).astype("uint8")) & tirx.const(15, "uint8")

    args = (k_dim, n_dim, nb, group, x_dtype, s_dtype, m, vector_bits)
    return _dequant_gemm("q4", codes, nibble, *args)


def _dequant_gemm(
    kind: str,
    codes: te.Tensor,
    code: Callable[[Any, Any, Any], Any],
    k_dim: int,
    n_dim: int,
    nb: int,
    group: int,
    x_dtype: str,
    s_dtype: str,
    m: int | None,
    vector_bits: int,
) -> tirx.PrimFunc:
    """The weight-only panel GEMM of :func:`panel_gemm_q4` and :func:`panel_gemm_q8`: ``w =
    (code(p, k, lane) - offset) * scale`` with scales and offsets ``[P, K/g, NB]``."""
    panels = (n_dim + nb - 1) // nb
    scale = te.placeholder((panels, k_dim // group, nb), s_dtype, name="scale")
    offset = te.placeholder((panels, k_dim // group, nb), s_dtype, name="offset")

    def term(x: te.Tensor, i: Any, j: Any, k: Any) -> Any:
        p, lane = j // nb, j % nb
        g = k // group
        w = (code(p, k, lane).astype(F32) - offset[p, g, lane].astype(F32)) * scale[
            p, g, lane
        ].astype(F32)
        return x[i, k].astype(F32) * w

    return _gemm(
        f"panel_gemm_{kind}_k{k_dim}_n{n_dim}_g{group}",
        m,
        n_dim,
        k_dim,
        nb,
        (k_dim, x_dtype),
        [codes, scale, offset],
        term,
        vector_bits,
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
    vector_bits: int = 512,
) -> tirx.PrimFunc:
    """N:M sparse on the CPU: values/positions ``[P, K*N/M, NB]``; only the stored non-zeros are
    multiplied (the activation is gathered by position), the dense weight never exists."""
    panels = (n_dim + nb - 1) // nb
    kk_dim = k_dim // m_group * n_keep
    vals = te.placeholder((panels, kk_dim, nb), w_dtype, name="values")
    idx = te.placeholder((panels, kk_dim, nb), "uint8", name="index")

    def term(x: te.Tensor, i: Any, j: Any, kk: Any) -> Any:
        p, lane = j // nb, j % nb
        col = (kk // n_keep) * m_group + idx[p, kk, lane].astype("int64")
        return x[i, col].astype(F32) * vals[p, kk, lane].astype(F32)

    return _gemm(
        f"panel_gemm_nm{n_keep}{m_group}_k{k_dim}_n{n_dim}",
        m,
        n_dim,
        kk_dim,
        nb,
        (k_dim, x_dtype),
        [vals, idx],
        term,
        vector_bits,
    )


def panel_gemm_q8(
    k_dim: int,
    n_dim: int,
    nb: int,
    group: int,
    x_dtype: str,
    s_dtype: str,
    m: int | None = None,
    vector_bits: int = 512,
) -> tirx.PrimFunc:
    """5..8-bit weight-only on the CPU: int8 codes ``[P, K, NB]``, scales and offsets
    ``[P, K/g, NB]``: ``w = (code - offset) * scale``."""
    codes = te.placeholder(((n_dim + nb - 1) // nb, k_dim, nb), "int8", name="codes")
    args = (k_dim, n_dim, nb, group, x_dtype, s_dtype, m, vector_bits)
    return _dequant_gemm("q8", codes, lambda p, k, lane: codes[p, k, lane], *args)
