"""TE definitions of token pruning's ops (``token_scores``, ``keep_rows``, ``gather_rows``), shared
by every TVM target.

They mirror the reference semantics in :mod:`llmc.ir.ops_adaptive` without a sort, so that every
backend (and dlight on GPUs) sees only element-wise maps and reductions:

- ``keep_rows`` (``topk``/``threshold``) keeps a row when fewer than ``c`` rows beat it: row ``j``
  beats row ``i`` when its key is larger, or equal with ``j < i`` (the reference's stable sort);
  forced rows have key ``+inf``. ``uniform`` marks the free row whose rank among free rows is
  ``floor((k + 0.5) * F / need)`` for some ``k < need``, in float64 like the reference.
- ``gather_rows`` finds the source of kept row ``k`` as the number of rows whose running count of
  kept rows is at most ``k`` (the index of the ``k + 1``-th kept row), then gathers.

All are O(rows^2) per batch row, which is small next to the layers they prune (1024 rows:
about a million comparisons against a layer's 10^9 FLOPs).
"""

from __future__ import annotations

from typing import Any

from tvm import te, tirx

from llmc.ir.ops_adaptive import _HASH_MUL, _HASH_SEED, _MASK32

F32, F64, I64 = "float32", "float64", "int64"


def _f32(x: Any) -> Any:
    return x.astype(F32) if x.dtype != F32 else x


def _i64(c: Any) -> Any:
    return tirx.Cast(I64, c)


# -- token_scores ---------------------------------------------------------------------------------


def _new_key_probs(
    q: te.Tensor, k: te.Tensor, r0: Any, nq: Any, scale: float, causal: bool
) -> te.Tensor:
    """float32 ``softmax(scale q k^T)`` of query rows ``r0 .. r0 + nq`` under the causal mask
    (bottom-right aligned), restricted to the new rows' keys: ``[b, h, nq, rows]``."""
    b, h, rows, d = q.shape
    kvh, t = k.shape[1], k.shape[2]
    g = h // kvh
    past = t - rows
    rd = te.reduce_axis((0, d), "rd")
    dot = te.compute(
        (b, h, nq, t),
        lambda bi, hi, i, j: te.sum(
            _f32(q[bi, hi, r0 + i, rd]) * _f32(k[bi, hi // g, j, rd]), axis=rd
        ),
        name="prune_qk",
    )
    qk = te.compute(
        (b, h, nq, t),
        lambda bi, hi, i, j: dot[bi, hi, i, j] * tirx.const(scale, F32),
        name="prune_qk_scaled",
    )

    def vis(i: Any, j: Any) -> Any:
        return j <= r0 + i + past if causal else tirx.const(True, "bool")

    j1 = te.reduce_axis((0, t), "j1")
    mx = te.compute(
        (b, h, nq),
        lambda bi, hi, i: te.max(
            tirx.if_then_else(vis(i, j1), qk[bi, hi, i, j1], tirx.min_value(F32)), axis=j1
        ),
        name="prune_max",
    )
    j2 = te.reduce_axis((0, t), "j2")
    den = te.compute(
        (b, h, nq),
        lambda bi, hi, i: te.sum(
            tirx.if_then_else(
                vis(i, j2), tirx.exp(qk[bi, hi, i, j2] - mx[bi, hi, i]), tirx.const(0.0, F32)
            ),
            axis=j2,
        ),
        name="prune_den",
    )
    return te.compute(
        (b, h, nq, rows),
        lambda bi, hi, i, j: tirx.if_then_else(
            vis(i, j + past),
            tirx.exp(qk[bi, hi, i, j + past] - mx[bi, hi, i]) / den[bi, hi, i],
            tirx.const(0.0, F32),
        ),
        name="prune_probs",
    )


def attention_scores(
    q: te.Tensor, k: te.Tensor, window: int, scale: float, causal: bool
) -> te.Tensor:
    """``method=attention``: the mean attention each new row receives from the last ``window``
    query rows (0: all), over heads: f32[b, rows]."""
    b, h, rows, _ = q.shape
    nq = tirx.min(tirx.const(window, I64), rows) if window else rows
    p = _new_key_probs(q, k, rows - nq, nq, scale, causal)
    rh = te.reduce_axis((0, h), "rh")
    ri = te.reduce_axis((0, nq), "ri")
    tot = te.compute(
        (b, rows), lambda bi, j: te.sum(p[bi, rh, ri, j], axis=[rh, ri]), name="prune_att_sum"
    )
    return te.compute(
        (b, rows),
        lambda bi, j: tot[bi, j] / tirx.Cast(F32, h * nq),
        name="prune_att_mean",
    )


def pagerank_scores(
    q: te.Tensor, k: te.Tensor, scale: float, causal: bool, iters: int, damping: float
) -> te.Tensor:
    """``method=pagerank``: ``iters`` power iterations over the head-averaged attention among
    the new rows, damping ``damping``, from the uniform vector: f32[b, rows]."""
    b, h, rows, _ = q.shape
    p = _new_key_probs(q, k, tirx.const(0, I64), rows, scale, causal)
    rh = te.reduce_axis((0, h), "rh")
    msum = te.compute(
        (b, rows, rows), lambda bi, i, j: te.sum(p[bi, rh, i, j], axis=rh), name="prune_pr_msum"
    )
    m = te.compute(
        (b, rows, rows),
        lambda bi, i, j: msum[bi, i, j] / tirx.Cast(F32, h),
        name="prune_pr_m",
    )
    nrows = tirx.Cast(F32, rows)
    s = te.compute(
        (b, rows),
        lambda bi, j: tirx.const(1.0, F32) / tirx.max(nrows, tirx.const(1.0, F32)),
        name="prune_pr_init",
    )
    base = tirx.const(1.0 - damping, F32) / nrows
    dmp = tirx.const(damping, F32)
    for it in range(iters):
        s = _pagerank_step(s, m, base, dmp, it)
    return s


def _pagerank_step(s: te.Tensor, m: te.Tensor, base: Any, dmp: Any, it: int) -> te.Tensor:
    """One power iteration: ``(1 - d) / rows + d * s @ m``, renormalised to sum 1."""
    b, rows = s.shape
    ri = te.reduce_axis((0, rows), f"ri{it}")
    walk = te.compute(
        (b, rows),
        lambda bi, j: te.sum(s[bi, ri] * m[bi, ri, j], axis=ri),
        name=f"prune_pr_walk{it}",
    )
    raw = te.compute((b, rows), lambda bi, j: base + dmp * walk[bi, j], name=f"prune_pr_step{it}")
    rj = te.reduce_axis((0, rows), f"rj{it}")
    tot = te.compute((b,), lambda bi: te.sum(raw[bi, rj], axis=rj), name=f"prune_pr_sum{it}")
    return te.compute(
        (b, rows),
        lambda bi, j: raw[bi, j] / tirx.max(tot[bi], tirx.const(1e-30, F32)),
        name=f"prune_pr_norm{it}",
    )


def random_scores(pos: te.Tensor, seed: int) -> te.Tensor:
    """``method=random``: :func:`llmc.ir.ops_adaptive.position_hash`, in int64: f32[b, rows]."""
    mask = tirx.const(_MASK32, I64)

    def f(bi: Any, j: Any) -> Any:
        x = tirx.bitwise_and(pos[bi, j].astype(I64) + tirx.const(seed * _HASH_SEED, I64), mask)
        for _ in range(2):
            x = tirx.bitwise_xor(x, tirx.shift_right(x, tirx.const(16, I64)))
            x = tirx.bitwise_and(x * tirx.const(_HASH_MUL, I64), mask)
        x = tirx.bitwise_xor(x, tirx.shift_right(x, tirx.const(16, I64)))
        return (tirx.Cast(F64, x) / tirx.const(2.0**32, F64)).astype(F32)

    return te.compute(pos.shape, f, name="prune_hash")


# -- keep_rows ------------------------------------------------------------------------------------


def keep_rows(
    scores: te.Tensor,
    pos: te.Tensor,
    total: Any,
    keep: float,
    recent: int,
    sink: bool,
    method: str,
    theta: float,
) -> te.Tensor:
    """The keep mask bool[b, rows] (see :func:`llmc.ir.ops_adaptive.keep_rows`): the same count
    ``c`` in every batch row, chosen by rank (no sort)."""
    b, rows = scores.shape

    def forced(bi: Any, i: Any) -> Any:
        f = i >= rows - recent
        return tirx.any(f, pos[bi, i] == tirx.const(0, pos.dtype)) if sink else f

    ri = te.reduce_axis((0, rows), "ri")
    nf = te.compute((b,), lambda bi: te.sum(_i64(forced(bi, ri)), axis=ri), name="prune_nforced")
    # round_half_up(keep * total) in float64, as llmc.ir.ops_adaptive.keep_count
    kc = _i64(tirx.floor(tirx.Cast(F64, total) * tirx.const(keep, F64) + tirx.const(0.5, F64)))
    counts = [nf]
    if method == "threshold":
        rm = te.reduce_axis((0, rows), "rm")
        ssum = te.compute(
            (b,), lambda bi: te.sum(_f32(scores[bi, rm]), axis=rm), name="prune_score_sum"
        )
        mean = te.compute((b,), lambda bi: ssum[bi] / tirx.Cast(F32, rows), name="prune_mean")
        rp = te.reduce_axis((0, rows), "rp")
        passes = te.compute(
            (b,),
            lambda bi: te.sum(
                _i64(
                    tirx.any(
                        _f32(scores[bi, rp]) >= tirx.const(theta, F32) * mean[bi],
                        forced(bi, rp),
                    )
                ),
                axis=rp,
            ),
            name="prune_passes",
        )
        counts.append(passes)

    def most(c: te.Tensor) -> Any:
        r = te.reduce_axis((0, b), f"rb_{c.op.name}")
        return te.compute((1,), lambda _: te.max(c[r], axis=r), name=f"{c.op.name}_max")

    maxes = [most(c) for c in counts]
    cnt = te.compute(
        (1,),
        lambda z: tirx.min(
            _i64(rows),
            _max_all([kc, *[m[z] for m in maxes]]),
        ),
        name="prune_count",
    )
    zero = tirx.const(0, "int32")
    if method == "uniform":
        rf = te.reduce_axis((0, rows), "rf")
        free_rank = te.compute(
            (b, rows),
            lambda bi, i: te.sum(_i64(tirx.all(rf < i, tirx.Not(forced(bi, rf)))), axis=rf),
            name="prune_free_rank",
        )
        rk = te.reduce_axis((0, rows), "rk")

        def pick(bi: Any, i: Any) -> Any:
            need = cnt[zero] - nf[bi]
            free = _i64(rows) - nf[bi]
            at = tirx.Cast(
                I64,
                tirx.floor(
                    (tirx.Cast(F64, rk) + tirx.const(0.5, F64))
                    * tirx.Cast(F64, free)
                    / tirx.Cast(F64, tirx.max(need, tirx.const(1, I64)))
                ),
            )
            return te.sum(_i64(tirx.all(_i64(rk) < need, at == free_rank[bi, i])), axis=rk)

        picked = te.compute((b, rows), pick, name="prune_picked")
        return te.compute(
            (b, rows),
            lambda bi, i: tirx.any(forced(bi, i), picked[bi, i] > tirx.const(0, I64)),
            name="prune_keep",
        )
    inf = tirx.max_value(F32)

    def key(bi: Any, i: Any) -> Any:
        return tirx.if_then_else(forced(bi, i), inf, _f32(scores[bi, i]))

    keyed = te.compute((b, rows), key, name="prune_key")
    rr = te.reduce_axis((0, rows), "rr")
    rank = te.compute(
        (b, rows),
        lambda bi, i: te.sum(
            _i64(
                tirx.any(
                    keyed[bi, rr] > keyed[bi, i],
                    tirx.all(keyed[bi, rr] == keyed[bi, i], rr < i),
                )
            ),
            axis=rr,
        ),
        name="prune_rank",
    )
    return te.compute((b, rows), lambda bi, i: rank[bi, i] < cnt[zero], name="prune_keep")


def _max_all(xs: list[Any]) -> Any:
    out = xs[0]
    for x in xs[1:]:
        out = tirx.max(out, x)
    return out


# -- gather_rows ----------------------------------------------------------------------------------


def kept_count(mask: te.Tensor) -> te.Tensor:
    """int64[1]: the rows batch row 0 keeps (every batch row keeps as many)."""
    rows = mask.shape[-1]
    r = te.reduce_axis((0, rows), "r")
    return te.compute((1,), lambda z: te.sum(_i64(mask[z * 0, r]), axis=r), name="prune_kept")


def kept_sources(mask: te.Tensor, n: Any) -> te.Tensor:
    """int64[b, n]: the index of the ``k``-th kept row of each batch row, in order."""
    b, rows = mask.shape
    rc = te.reduce_axis((0, rows), "rc")
    run = te.compute(
        (b, rows),
        lambda bi, i: te.sum(_i64(tirx.all(rc <= i, mask[bi, rc])), axis=rc),
        name="prune_running",
    )
    ri = te.reduce_axis((0, rows), "ri")
    return te.compute(
        (b, n), lambda bi, k: te.sum(_i64(run[bi, ri] <= _i64(k)), axis=ri), name="prune_src"
    )


def gather_rows(x: te.Tensor, src: te.Tensor) -> te.Tensor:
    """``x[b, src[b, k], ...]``: x [b, rows, ...], src int64[b, n] -> [b, n, ...]."""
    b, n = src.shape
    rest = list(x.shape[2:])
    return te.compute((b, n, *rest), lambda bi, k, *r: x[(bi, src[bi, k], *r)], name="gather_rows")
