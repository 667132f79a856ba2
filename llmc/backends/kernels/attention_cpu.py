"""Hand-written CPU attention kernels (TIR), parallel over query rows (blocks of rows for prefill).

Same semantics and layouts as :mod:`llmc.backends.kernels.attention_gpu` (q [b, h, s, d], k/v
buffers [b, kvh, cap, d] of which the first ``TT`` keys are valid, bottom-right causal mask,
sliding window, GQA), parallelised over rows (and, for the asynchronous partials, over key chunks
too). Accumulation is in float32; each q.k dot keeps :func:`dot_lanes` independent partial sums
(a vector FMA per key slice instead of one chain of ``d`` dependent adds), and the online
softmax's rescale factor is computed once per key.

- :func:`attention_sync`: online (synchronized) softmax. Prefill (more than one query row) is
  blocked: ``ROWS`` query rows of one head per parallel task, keys in tiles of ``KEY_TILE``, K
  transposed per kv head into a workspace so that a tile's logits are key-vectorized FMAs, one
  rescale per row per tile, a vectorized exp (:func:`fast_exp`). Decode (one row) keeps the
  one-row loop.
- :func:`async_partials` / :func:`async_combine`: FlashDecoding++'s asynchronous softmax in
  split-KV form: per ``(row, chunk)`` sums with the unified max ``phi``; the combine sums them when
  the row passed the range check and otherwise recomputes the row synchronously (the fallback).
"""

from __future__ import annotations

from tvm.script import tirx as T

from llmc.backends.kernels.attention_gpu import NEG, key_bounds, logit


def _qk_dot(d: int, lanes: int):
    """A TIR macro: ``out[idx] = q_loc . K[bi, kh, key, :]`` with ``lanes`` partial sums in
    ``part`` (see :func:`dot_lanes`); shared by the three kernels' key loops."""

    @T.macro
    def qk_dot(part, q_loc, K, bi, kh, key, out, idx):
        for el in T.vectorized(lanes):
            part[el] = T.float32(0)
        for eo in T.serial(d // lanes):
            for el in T.vectorized(lanes):
                part[el] = part[el] + q_loc[eo * lanes + el] * T.Cast(
                    "float32", K[bi, kh, key, eo * lanes + el]
                )
        out[idx] = T.float32(0)
        for el in T.serial(lanes):
            out[idx] = out[idx] + part[el]

    return qk_dot


def dot_lanes(d: int) -> int:
    """Independent partial sums per q.k dot product (breaks the add chain: a 64-element dot as
    one chain is 64 dependent adds; as 8 it is a vector FMA per 8 elements)."""
    for lanes in (8, 4, 2):
        if d % lanes == 0:
            return lanes
    return 1


#: query rows per parallel task and keys per tile of the blocked (prefill) path of
#: :func:`attention_sync`
ROWS = 4
KEY_TILE = 32


def fast_exp(x):
    """``exp(x)`` for float32 ``x`` <= 0 as plain arithmetic (vectorizes, unlike the ``expf``
    call that ``T.exp`` becomes): Cephes' ``expf``, ``x = n ln 2 + f`` with ``|f| <= ln 2 / 2``, a
    degree-6 polynomial for ``e^f`` (relative error ~1e-7), ``2^n`` built in the exponent bits.
    ``x`` is clamped at -87 (``e^-87`` ~ 1.6e-38, the smallest normal float32 range)."""
    x = T.max(x, T.float32(-87.0))
    n = T.floor(x * T.float32(1.44269504088896341) + T.float32(0.5))
    f = x - n * T.float32(0.693359375) - n * T.float32(-2.12194440e-4)
    y = T.float32(1.9875691500e-4)
    for c in (1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1):
        y = y * f + T.float32(c)
    y = y * f * f + f + T.float32(1.0)
    return y * T.reinterpret("float32", T.shift_left(T.Cast("int32", n) + 127, 23))


def attention_sync(
    h: int,
    kvh: int,
    d: int,
    dtype: str,
    scale: float,
    causal: bool,
    window: int,
    softcap: float = 0.0,
    rows: int = ROWS,
    key_tile: int = KEY_TILE,
):
    """Online-softmax attention. A parallel task takes ``rows`` query rows of one head (a block;
    a sequence of one row, the decode step, keeps the one-row loop). A block walks the keys that
    any of its rows sees in tiles of ``key_tile``: the ``rows x key_tile`` logits (each loaded key
    row shared by the block's rows; a dot is :func:`tree_lanes` vector FMAs and a tree sum), the
    mask (a select per logit; tiles no row sees are never visited), one rescale per row per tile,
    then ``P . V`` with each loaded value row shared by the rows. A block's rows past the
    sequence's end repeat its last row and are not written."""
    group = h // kvh
    key_lo, key_hi = key_bounds(causal, window)
    lanes = dot_lanes(d)
    qk_dot = _qk_dot(d, lanes)
    cap = logit(1.0, softcap)  # q is pre-scaled: the dot is the scaled logit
    R, KT, VL = rows, key_tile, 16  # VL: one AVX-512 vector of float32
    if KT % VL:
        raise ValueError(f"attention_sync: key_tile {KT} is not a multiple of {VL}")

    # fmt: off
    @T.prim_func(s_tir=True)
    def attention(q_h: T.handle, k_h: T.handle, v_h: T.handle, TT: T.int64, o_h: T.handle):
        T.func_attr({"tirx.is_scheduled": True, "tirx.noalias": True})
        B = T.int64()
        S = T.int64()
        CAP = T.int64()
        Q = T.match_buffer(q_h, (B, h, S, d), dtype)
        K = T.match_buffer(k_h, (B, kvh, CAP, d), dtype)
        V = T.match_buffer(v_h, (B, kvh, CAP, d), dtype)
        OUT = T.match_buffer(o_h, (B, h, S, d), dtype)
        if S == T.int64(1):
            for row in T.parallel(B * h):
                with T.sblock("attn"):
                    T.reads()
                    T.writes()
                    q_loc = T.sblock_alloc_buffer((d,), "float32", scope="local")
                    acc = T.sblock_alloc_buffer((d,), "float32", scope="local")
                    part = T.sblock_alloc_buffer((lanes,), "float32", scope="local")
                    st = T.sblock_alloc_buffer((6,), "float32", scope="local")  # m, l, m_new, p, dot, alpha
                    bi: T.let[T.int64] = row // h
                    hi: T.let[T.int64] = row % h
                    kh: T.let[T.int64] = hi // group
                    qpos: T.let[T.int64] = TT - T.int64(1)
                    k_hi: T.let[T.int64] = key_hi(qpos, TT)
                    k_lo: T.let[T.int64] = key_lo(qpos)
                    for e in T.serial(d):
                        q_loc[e] = T.Cast("float32", Q[bi, hi, 0, e]) * T.float32(scale)
                        acc[e] = T.float32(0)
                    st[0] = T.float32(NEG)
                    st[1] = T.float32(0)
                    for jj in T.serial(k_hi - k_lo):
                        qk_dot(part, q_loc, K, bi, kh, k_lo + jj, st, 4)
                        st[2] = T.max(st[0], cap(st[4]))
                        st[3] = T.exp(cap(st[4]) - st[2])
                        st[5] = T.exp(st[0] - st[2])
                        for e in T.vectorized(d):
                            acc[e] = acc[e] * st[5] + st[3] * T.Cast("float32", V[bi, kh, k_lo + jj, e])
                        st[1] = st[1] * st[5] + st[3]
                        st[0] = st[2]
                    for e in T.serial(d):
                        OUT[bi, hi, 0, e] = T.Cast(dtype, acc[e] / st[1])
        else:
            # K transposed per (batch, kv head) to [d, key] (keys padded by a tile of zeros): a
            # tile's logits are then R x KT vector FMAs along the keys, no horizontal sums
            KTr = T.alloc_buffer((B * kvh * d, TT + KT), "float32")
            for x in T.parallel(B * kvh):
                with T.sblock("k_transpose"):
                    T.reads()
                    T.writes()
                    for key in T.serial(TT + KT):
                        for e in T.serial(d):
                            KTr[x * d + e, key] = T.if_then_else(
                                key < TT, T.Cast("float32", K[x // kvh, x % kvh, T.min(key, TT - 1), e]), T.float32(0))
            for task in T.parallel(B * h * ((S + (R - 1)) // R)):
                with T.sblock("attn_blocked"):
                    T.reads()
                    T.writes()
                    q_loc = T.sblock_alloc_buffer((R, d), "float32", scope="local")
                    acc = T.sblock_alloc_buffer((R, d), "float32", scope="local")
                    sc = T.sblock_alloc_buffer((R, KT), "float32", scope="local")
                    m = T.sblock_alloc_buffer((R,), "float32", scope="local")
                    mn = T.sblock_alloc_buffer((R,), "float32", scope="local")
                    al = T.sblock_alloc_buffer((R,), "float32", scope="local")
                    ls = T.sblock_alloc_buffer((R,), "float32", scope="local")
                    mv = T.sblock_alloc_buffer((R, VL), "float32", scope="local")
                    lv = T.sblock_alloc_buffer((R, VL), "float32", scope="local")
                    nb: T.let[T.int64] = (S + (R - 1)) // R
                    bi: T.let[T.int64] = task // (h * nb)
                    hi: T.let[T.int64] = task // nb % h
                    r0: T.let[T.int64] = task % nb * R
                    kh: T.let[T.int64] = hi // group
                    kt0: T.let[T.int64] = (bi * kvh + kh) * d
                    last: T.let[T.int64] = T.min(r0 + (R - 1), S - 1)
                    blo: T.let[T.int64] = key_lo(r0 + TT - S)
                    bhi: T.let[T.int64] = key_hi(last + TT - S, TT)
                    for r in T.unroll(R):
                        for e in T.vectorized(d):
                            q_loc[r, e] = T.Cast("float32", Q[bi, hi, T.min(r0 + r, S - 1), e]) * T.float32(scale)
                            acc[r, e] = T.float32(0)
                        m[r] = T.float32(NEG)
                        for el in T.vectorized(VL):
                            lv[r, el] = T.float32(0)
                    for t in T.serial((T.max(bhi - blo, T.int64(0)) + (KT - 1)) // KT):
                        for r in T.unroll(R):
                            for jj in T.vectorized(KT):
                                sc[r, jj] = T.float32(0)
                        for e in T.serial(d):
                            for r in T.unroll(R):
                                for jj in T.vectorized(KT):
                                    sc[r, jj] = sc[r, jj] + q_loc[r, e] * KTr[kt0 + e, blo + t * KT + jj]
                        for r in T.unroll(R):
                            for jj in T.vectorized(KT):
                                sc[r, jj] = T.if_then_else(
                                    blo + t * KT + jj >= key_lo(T.min(r0 + r, S - 1) + TT - S)
                                    and blo + t * KT + jj < key_hi(T.min(r0 + r, S - 1) + TT - S, TT),
                                    cap(sc[r, jj]), T.float32(NEG))
                            for el in T.vectorized(VL):
                                mv[r, el] = sc[r, el]
                            for jo in T.unroll(KT // VL - 1):
                                for el in T.vectorized(VL):
                                    mv[r, el] = T.max(mv[r, el], sc[r, (jo + 1) * VL + el])
                            mn[r] = m[r]
                        for el in T.unroll(VL):  # the rows' max chains interleaved
                            for r in T.unroll(R):
                                mn[r] = T.max(mn[r], mv[r, el])
                        for r in T.unroll(R):
                            al[r] = fast_exp(m[r] - mn[r])
                            m[r] = mn[r]
                            for jj in T.vectorized(KT):
                                sc[r, jj] = T.if_then_else(
                                    sc[r, jj] > T.float32(NEG), fast_exp(sc[r, jj] - mn[r]), T.float32(0))
                            for el in T.vectorized(VL):
                                lv[r, el] = lv[r, el] * al[r]
                            for jo in T.unroll(KT // VL):
                                for el in T.vectorized(VL):
                                    lv[r, el] = lv[r, el] + sc[r, jo * VL + el]
                            for e in T.vectorized(d):
                                acc[r, e] = acc[r, e] * al[r]
                        for jj in T.serial(KT):
                            for r in T.unroll(R):
                                for e in T.vectorized(d):
                                    acc[r, e] = acc[r, e] + sc[r, jj] * T.Cast(
                                        "float32", V[bi, kh, T.min(blo + t * KT + jj, bhi - 1), e])
                    for r in T.unroll(R):
                        ls[r] = T.float32(0)
                        for el in T.serial(VL):
                            ls[r] = ls[r] + lv[r, el]
                        if r0 + r < S:
                            for e in T.vectorized(d):
                                OUT[bi, hi, r0 + r, e] = T.Cast(dtype, acc[r, e] / ls[r])
    # fmt: on
    return attention


def async_partials(
    h: int,
    kvh: int,
    d: int,
    dtype: str,
    scale: float,
    causal: bool,
    window: int,
    chunk: int,
    phi: float,
):
    group = h // kvh
    key_lo, key_hi = key_bounds(causal, window)
    lanes = dot_lanes(d)
    qk_dot = _qk_dot(d, lanes)

    # fmt: off
    @T.prim_func(s_tir=True)
    def partials(q_h: T.handle, k_h: T.handle, v_h: T.handle, TT: T.int64, po_h: T.handle, ps_h: T.handle, pm_h: T.handle):
        T.func_attr({"tirx.is_scheduled": True, "tirx.noalias": True})
        B = T.int64()
        S = T.int64()
        CAP = T.int64()
        NC = T.int64()
        Q = T.match_buffer(q_h, (B, h, S, d), dtype)
        K = T.match_buffer(k_h, (B, kvh, CAP, d), dtype)
        V = T.match_buffer(v_h, (B, kvh, CAP, d), dtype)
        PO = T.match_buffer(po_h, (B, h, S, NC, d), "float32")
        PS = T.match_buffer(ps_h, (B, h, S, NC), "float32")
        PM = T.match_buffer(pm_h, (B, h, S, NC), "float32")
        for rc in T.parallel(B * h * S * NC):
            with T.sblock("partials"):
                T.reads()
                T.writes()
                q_loc = T.sblock_alloc_buffer((d,), "float32", scope="local")
                acc = T.sblock_alloc_buffer((d,), "float32", scope="local")
                part = T.sblock_alloc_buffer((lanes,), "float32", scope="local")
                st = T.sblock_alloc_buffer((3,), "float32", scope="local")  # sum, max, dot
                row: T.let[T.int64] = rc // NC
                c: T.let[T.int64] = rc % NC
                bi: T.let[T.int64] = row // (h * S)
                hi: T.let[T.int64] = row // S % h
                i: T.let[T.int64] = row % S
                kh: T.let[T.int64] = hi // group
                qpos: T.let[T.int64] = i + TT - S
                k_hi: T.let[T.int64] = T.min(key_hi(qpos, TT), (c + 1) * chunk)
                k_lo: T.let[T.int64] = T.max(key_lo(qpos), c * chunk)
                for e in T.serial(d):
                    q_loc[e] = T.Cast("float32", Q[bi, hi, i, e]) * T.float32(scale)
                    acc[e] = T.float32(0)
                st[0] = T.float32(0)
                st[1] = T.float32(NEG)
                for jj in T.serial(T.max(k_hi - k_lo, T.int64(0))):
                    qk_dot(part, q_loc, K, bi, kh, k_lo + jj, st, 2)
                    st[1] = T.max(st[1], st[2])
                    st[2] = T.exp(st[2] - T.float32(phi))
                    st[0] = st[0] + st[2]
                    for e in T.vectorized(d):
                        acc[e] = acc[e] + st[2] * T.Cast("float32", V[bi, kh, k_lo + jj, e])
                for e in T.serial(d):
                    PO[bi, hi, i, c, e] = acc[e]
                PS[bi, hi, i, c] = st[0]
                PM[bi, hi, i, c] = st[1]
    # fmt: on
    return partials


def async_combine(
    h: int,
    kvh: int,
    d: int,
    dtype: str,
    scale: float,
    causal: bool,
    window: int,
    phi: float,
    lo: float,
    hi: float,
):
    group = h // kvh
    key_lo, key_hi = key_bounds(causal, window)
    lanes = dot_lanes(d)
    qk_dot = _qk_dot(d, lanes)

    # fmt: off
    @T.prim_func(s_tir=True)
    def combine(q_h: T.handle, k_h: T.handle, v_h: T.handle, TT: T.int64, po_h: T.handle, ps_h: T.handle, pm_h: T.handle, o_h: T.handle):
        T.func_attr({"tirx.is_scheduled": True, "tirx.noalias": True})
        B = T.int64()
        S = T.int64()
        CAP = T.int64()
        NC = T.int64()
        Q = T.match_buffer(q_h, (B, h, S, d), dtype)
        K = T.match_buffer(k_h, (B, kvh, CAP, d), dtype)
        V = T.match_buffer(v_h, (B, kvh, CAP, d), dtype)
        PO = T.match_buffer(po_h, (B, h, S, NC, d), "float32")
        PS = T.match_buffer(ps_h, (B, h, S, NC), "float32")
        PM = T.match_buffer(pm_h, (B, h, S, NC), "float32")
        OUT = T.match_buffer(o_h, (B, h, S, d), dtype)
        for row in T.parallel(B * h * S):
            with T.sblock("combine"):
                T.reads()
                T.writes()
                q_loc = T.sblock_alloc_buffer((d,), "float32", scope="local")
                acc = T.sblock_alloc_buffer((d,), "float32", scope="local")
                part = T.sblock_alloc_buffer((lanes,), "float32", scope="local")
                st = T.sblock_alloc_buffer((6,), "float32", scope="local")  # m/sum, l, m_new/max, p, dot, alpha
                ok = T.sblock_alloc_buffer((1,), "int32", scope="local")
                bi: T.let[T.int64] = row // (h * S)
                hh: T.let[T.int64] = row // S % h
                i: T.let[T.int64] = row % S
                kh: T.let[T.int64] = hh // group
                ok[0] = 1
                st[2] = T.float32(NEG)
                for c in T.serial(NC):
                    if PM[bi, hh, i, c] - T.float32(phi) > T.float32(hi):
                        ok[0] = 0
                    st[2] = T.max(st[2], PM[bi, hh, i, c])
                if st[2] - T.float32(phi) < T.float32(lo):
                    ok[0] = 0
                if ok[0] == 1:
                    st[0] = T.float32(0)
                    for e in T.serial(d):
                        acc[e] = T.float32(0)
                    for c in T.serial(NC):
                        st[0] = st[0] + PS[bi, hh, i, c]
                        for e in T.serial(d):
                            acc[e] = acc[e] + PO[bi, hh, i, c, e]
                    for e in T.serial(d):
                        OUT[bi, hh, i, e] = T.Cast(dtype, acc[e] / st[0])
                else:
                    qpos: T.let[T.int64] = i + TT - S
                    k_hi: T.let[T.int64] = key_hi(qpos, TT)
                    k_lo: T.let[T.int64] = key_lo(qpos)
                    for e in T.serial(d):
                        q_loc[e] = T.Cast("float32", Q[bi, hh, i, e]) * T.float32(scale)
                        acc[e] = T.float32(0)
                    st[0] = T.float32(NEG)
                    st[1] = T.float32(0)
                    for jj in T.serial(k_hi - k_lo):
                        qk_dot(part, q_loc, K, bi, kh, k_lo + jj, st, 4)
                        st[2] = T.max(st[0], st[4])
                        st[3] = T.exp(st[4] - st[2])
                        st[5] = T.exp(st[0] - st[2])
                        for e in T.vectorized(d):
                            acc[e] = acc[e] * st[5] + st[3] * T.Cast("float32", V[bi, kh, k_lo + jj, e])
                        st[1] = st[1] * st[5] + st[3]
                        st[0] = st[2]
                    for e in T.serial(d):
                        OUT[bi, hh, i, e] = T.Cast(dtype, acc[e] / st[1])
    # fmt: on
    return combine


def kv_append(kvh: int, d: int, dtype: str):
    """Write ``new`` [b, kvh, s, d] into the cache [b, kvh, cap, d] at keys ``past .. past+s``,
    in place (``call_tir_inplace``); a key at or past ``cap`` is dropped, never written out of
    bounds (the runner sizes the cache so that none is)."""

    # fmt: off
    @T.prim_func(s_tir=True)
    def kv_append(c_h: T.handle, x_h: T.handle, past: T.int64):
        T.func_attr({"tirx.is_scheduled": True, "tirx.noalias": True})
        B = T.int64()
        CAP = T.int64()
        S = T.int64()
        C = T.match_buffer(c_h, (B, kvh, CAP, d), dtype)
        X = T.match_buffer(x_h, (B, kvh, S, d), dtype)
        for row in T.serial(B * kvh * S):  # a decode step writes a few KB: no thread pool
            with T.sblock("kv_append"):
                T.reads()
                T.writes()
                bi: T.let[T.int64] = row // (kvh * S)
                hi: T.let[T.int64] = row // S % kvh
                i: T.let[T.int64] = row % S
                if past + i < CAP:
                    for e in T.serial(d):
                        C[bi, hi, past + i, e] = X[bi, hi, i, e]
    # fmt: on
    return kv_append
