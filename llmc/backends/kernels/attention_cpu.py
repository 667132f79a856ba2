"""Hand-written CPU attention kernels (TIR), parallel over blocks of query rows (prefill) or over
kv heads x key blocks (decode, split-K).

Same semantics and layouts as :mod:`llmc.backends.kernels.attention_gpu` (q [b, h, s, d], k/v
buffers [b, kvh, cap, d] of which the first ``TT`` keys are valid, bottom-right causal mask,
sliding window, GQA), parallelised over rows or row blocks and, for decode and the asynchronous
partials, over key chunks too. Accumulation is in float32; each dot-form q.k (decode, async)
keeps :func:`dot_lanes` independent partial sums (a vector FMA per key slice instead of one chain
of ``d`` dependent adds).

- :func:`attention_sync`: online (synchronized) softmax. Prefill (more than one query row) is
  blocked: ``BLOCKS`` blocks of ``ROWS`` query rows sharing a kv head per parallel task, keys in
  tiles of ``KEY_TILE`` (each tile loaded once for the blocks), logits vectorized along the rows
  (K read in place: no transpose, no workspace), one rescale per row per tile, a vectorized exp
  (:func:`fast_exp`). Decode (one row) is split-K: kv heads x ``SPLITS`` key blocks in parallel,
  then a merge; its partials are the only workspace (``batch x heads x SPLITS x (d + 2)``,
  independent of the number of keys).
- :func:`async_partials` / :func:`async_combine`: FlashDecoding++'s asynchronous softmax in
  split-KV form: per ``(row, chunk)`` sums with the unified max ``phi``; the combine sums them when
  the row passed the range check and otherwise recomputes the row synchronously (the fallback).
"""

from __future__ import annotations

from tvm.script import tirx as T

from llmc.backends.kernels.attention_gpu import NEG, key_bounds, logit
from llmc.backends.kernels.cpu import SCRATCH
from llmc.backends.kernels.memo import kernel_memo


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


#: prefill: query rows per block (pairs of position x grouped head, position-major: one AVX-512
#: vector of float32, the logits' vector axis), keys per tile, blocks per parallel task (sharing
#: each loaded key tile); decode: key blocks per kv head (split-K), merged at the end
ROWS = 16
KEY_TILE = 32
BLOCKS = 4
SPLITS = 16
#: decode: fewest keys per split-K block (a context below it runs unsplit, with no merge loop)
MIN_SPLIT_KEYS = 256


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


@kernel_memo
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
    splits: int = SPLITS,
    blocks: int = BLOCKS,
    min_split_keys: int = MIN_SPLIT_KEYS,
):
    """Online-softmax attention; no buffer of the call grows with the number of keys.

    Prefill (more than one query row): a parallel task takes ``blocks`` blocks of ``rows`` query
    rows that share a kv head (position-major pairs of position x grouped head, so GQA's heads
    share every loaded key) and walks the keys any of them sees in tiles of ``key_tile``, each
    tile loaded once for the blocks that see it (tiles no row of a block sees are skipped; a
    tile stays in L1/L2 across the blocks instead of being streamed again per block). A block's
    ``key_tile x rows`` logits are vector FMAs *along the rows* (a broadcast key element times a
    row of the block's transposed q, built once per task), so K is read in place, never
    transposed; the mask, the tile's max and sum and the vectorized exp (:func:`fast_exp`) are row
    vectors too; then ``P . V`` shares each loaded value row between the rows. Rows past the end
    repeat the last row and are not written; causal, windowed and per-layer key counts are the
    run-time ``TT`` and per-row bounds, as before.

    Decode (one row): split-K (flash-decoding): a task takes one kv head's ``group`` query heads
    over one of ``splits`` key blocks (so all threads stream K and V at batch 1 even with one kv
    head), writes its (max, sum, accumulator) partial to a ``batch x heads x splits x (d + 2)``
    workspace, and a second parallel loop merges the partials per head. The number of key blocks
    is chosen at run time, one per ``min_split_keys`` keys (1 to ``splits``): a short context
    runs one task per kv head that writes the output directly (no partials, no second loop:
    splitting 160 keys 16 ways cost 4x the unsplit call)."""
    group = h // kvh
    key_lo, key_hi = key_bounds(causal, window)
    lanes = dot_lanes(d)
    cap = logit(1.0, softcap)  # q is pre-scaled: the dot is the scaled logit
    R, KT, NS, G, NB = rows, key_tile, splits, group, blocks
    MK = min_split_keys
    if min(R, KT, NS, NB, MK) < 1:
        raise ValueError(
            f"attention_sync: rows {R}, key_tile {KT}, splits {NS}, blocks {NB}, "
            f"min_split_keys {MK} must be >= 1"
        )
    W = d + 2  # a decode partial: accumulator [d], max, sum
    U = next(u for u in (8, 4, 2, 1) if KT % u == 0)  # keys whose logits accumulate together

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
            PART = T.alloc_buffer((B * h * NS * W,), "float32")
            # key blocks at run time: one per MIN_SPLIT_KEYS keys, 1..NS (a short context runs
            # one task per kv head and writes OUT directly: no partials, no merge loop)
            nsr: T.let[T.int64] = T.max(T.min(
                (key_hi(TT - T.int64(1), TT) - key_lo(TT - T.int64(1)) + (MK - 1))
                // MK, NS), T.int64(1))
            for task in T.parallel(B * kvh * nsr):
                with T.sblock("attn_split"):
                    T.reads()
                    T.writes()
                    q_loc = T.sblock_alloc_buffer((G, d), "float32", scope=SCRATCH)
                    acc = T.sblock_alloc_buffer((G, d), "float32", scope=SCRATCH)
                    sc = T.sblock_alloc_buffer((G, KT), "float32", scope=SCRATCH)
                    part = T.sblock_alloc_buffer((lanes,), "float32", scope=SCRATCH)
                    m = T.sblock_alloc_buffer((G,), "float32", scope=SCRATCH)
                    mn = T.sblock_alloc_buffer((G,), "float32", scope=SCRATCH)
                    al = T.sblock_alloc_buffer((G,), "float32", scope=SCRATCH)
                    ls = T.sblock_alloc_buffer((G,), "float32", scope=SCRATCH)
                    x: T.let[T.int64] = task // nsr
                    c: T.let[T.int64] = task % nsr
                    bi: T.let[T.int64] = x // kvh
                    kh: T.let[T.int64] = x % kvh
                    lo: T.let[T.int64] = key_lo(TT - T.int64(1))
                    blk: T.let[T.int64] = (key_hi(TT - T.int64(1), TT) - lo + (nsr - 1)) // nsr
                    klo: T.let[T.int64] = lo + c * blk
                    khi: T.let[T.int64] = T.min(klo + blk, key_hi(TT - T.int64(1), TT))
                    for g in T.serial(G):
                        for e in T.vectorized(d):
                            q_loc[g, e] = T.Cast("float32", Q[bi, kh * G + g, 0, e]) * T.float32(scale)
                            acc[g, e] = T.float32(0)
                        m[g] = T.float32(NEG)
                        ls[g] = T.float32(0)
                    for t in T.serial((T.max(khi - klo, T.int64(0)) + (KT - 1)) // KT):
                        for jj in T.serial(KT):
                            for g in T.serial(G):
                                for el in T.vectorized(lanes):
                                    part[el] = T.float32(0)
                                for eo in T.serial(d // lanes):
                                    for el in T.vectorized(lanes):
                                        part[el] = part[el] + q_loc[g, eo * lanes + el] * T.Cast(
                                            "float32", K[bi, kh, T.min(klo + t * KT + jj, khi - 1), eo * lanes + el])
                                sc[g, jj] = T.float32(0)
                                for el in T.serial(lanes):
                                    sc[g, jj] = sc[g, jj] + part[el]
                                sc[g, jj] = T.Select(klo + t * KT + jj < khi, cap(sc[g, jj]), T.float32(NEG))
                        for g in T.serial(G):
                            mn[g] = m[g]
                            for jj in T.serial(KT):
                                mn[g] = T.max(mn[g], sc[g, jj])
                            al[g] = fast_exp(m[g] - mn[g])
                            m[g] = mn[g]
                            for jj in T.vectorized(KT):
                                sc[g, jj] = T.Select(
                                    sc[g, jj] > T.float32(NEG), fast_exp(sc[g, jj] - mn[g]), T.float32(0))
                            ls[g] = ls[g] * al[g]
                            for jj in T.serial(KT):
                                ls[g] = ls[g] + sc[g, jj]
                            for e in T.vectorized(d):
                                acc[g, e] = acc[g, e] * al[g]
                        for g in T.serial(G):
                            for jj in T.serial(KT):
                                for e in T.vectorized(d):
                                    acc[g, e] = acc[g, e] + sc[g, jj] * T.Cast(
                                        "float32", V[bi, kh, T.min(klo + t * KT + jj, khi - 1), e])
                    if nsr == T.int64(1):
                        for g in T.serial(G):
                            for e in T.vectorized(d):
                                OUT[bi, kh * G + g, 0, e] = T.Cast(dtype, acc[g, e] / ls[g])
                    else:
                        for g in T.serial(G):
                            for e in T.vectorized(d):
                                PART[((x * G + g) * NS + c) * W + e] = acc[g, e]
                            PART[((x * G + g) * NS + c) * W + d] = m[g]
                            PART[((x * G + g) * NS + c) * W + d + 1] = ls[g]
            if nsr > T.int64(1):
                for row in T.parallel(B * h):
                    with T.sblock("attn_merge"):
                        T.reads()
                        T.writes()
                        acc = T.sblock_alloc_buffer((d,), "float32", scope=SCRATCH)
                        st = T.sblock_alloc_buffer((3,), "float32", scope=SCRATCH)  # max, sum, weight
                        st[0] = T.float32(NEG)
                        for c in T.serial(nsr):
                            st[0] = T.max(st[0], PART[(row * NS + c) * W + d])
                        st[1] = T.float32(0)
                        for e in T.vectorized(d):
                            acc[e] = T.float32(0)
                        for c in T.serial(nsr):
                            st[2] = T.exp(PART[(row * NS + c) * W + d] - st[0])
                            st[1] = st[1] + st[2] * PART[(row * NS + c) * W + d + 1]
                            for e in T.vectorized(d):
                                acc[e] = acc[e] + st[2] * PART[(row * NS + c) * W + e]
                        for e in T.vectorized(d):
                            OUT[row // h, row % h, 0, e] = T.Cast(dtype, acc[e] / st[1])
        else:
            for task in T.parallel(B * kvh * ((S * G + (R * NB - 1)) // (R * NB))):
                with T.sblock("attn_blocked"):
                    T.reads()
                    T.writes()
                    qt = T.sblock_alloc_buffer((NB, d, R), "float32", scope=SCRATCH)
                    acc = T.sblock_alloc_buffer((NB, R, d), "float32", scope=SCRATCH)
                    sc = T.sblock_alloc_buffer((KT, R), "float32", scope=SCRATCH)
                    m = T.sblock_alloc_buffer((NB, R), "float32", scope=SCRATCH)
                    ls = T.sblock_alloc_buffer((NB, R), "float32", scope=SCRATCH)
                    mn = T.sblock_alloc_buffer((R,), "float32", scope=SCRATCH)
                    al = T.sblock_alloc_buffer((R,), "float32", scope=SCRATCH)
                    rlo = T.sblock_alloc_buffer((NB, R), "int64", scope=SCRATCH)
                    rhi = T.sblock_alloc_buffer((NB, R), "int64", scope=SCRATCH)
                    ng: T.let[T.int64] = (S * G + (R * NB - 1)) // (R * NB)
                    bi: T.let[T.int64] = task // (kvh * ng)
                    kh: T.let[T.int64] = task // ng % kvh
                    g0: T.let[T.int64] = task % ng * (R * NB)  # the group's first row
                    last: T.let[T.int64] = T.min(g0 + (R * NB - 1), S * G - 1)
                    glo: T.let[T.int64] = key_lo(g0 // G + TT - S)
                    ghi: T.let[T.int64] = key_hi(last // G + TT - S, TT)
                    for j in T.serial(NB):
                        for r in T.serial(R):
                            rlo[j, r] = key_lo(T.min(g0 + j * R + r, last) // G + TT - S)
                            rhi[j, r] = key_hi(T.min(g0 + j * R + r, last) // G + TT - S, TT)
                            for e in T.serial(d):
                                qt[j, e, r] = T.Cast("float32", Q[bi, kh * G + T.min(g0 + j * R + r, last) % G, T.min(g0 + j * R + r, last) // G, e]) * T.float32(scale)
                            for e in T.vectorized(d):
                                acc[j, r, e] = T.float32(0)
                        for r in T.vectorized(R):
                            m[j, r] = T.float32(NEG)
                            ls[j, r] = T.float32(0)
                    for t in T.serial((T.max(ghi - glo, T.int64(0)) + (KT - 1)) // KT):
                        for j in T.serial(NB):
                            # the block's rows see keys [rlo[j, 0], rhi[j, R - 1]): skip tiles outside
                            if g0 + j * R <= last and glo + t * KT < rhi[j, R - 1] and glo + t * KT + KT > rlo[j, 0]:
                                for jo in T.serial(KT // U):  # U keys at a time: U independent FMA chains
                                    for ji in T.unroll(U):
                                        for r in T.vectorized(R):
                                            sc[jo * U + ji, r] = T.float32(0)
                                    for e in T.serial(d):
                                        for ji in T.unroll(U):
                                            for r in T.vectorized(R):
                                                sc[jo * U + ji, r] = sc[jo * U + ji, r] + qt[j, e, r] * T.Cast(
                                                    "float32", K[bi, kh, T.min(glo + t * KT + jo * U + ji, ghi - 1), e])
                                for r in T.vectorized(R):
                                    mn[r] = m[j, r]
                                for jj in T.serial(KT):
                                    for r in T.vectorized(R):
                                        sc[jj, r] = T.Select(
                                            glo + t * KT + jj >= rlo[j, r] and glo + t * KT + jj < rhi[j, r],
                                            cap(sc[jj, r]), T.float32(NEG))
                                        mn[r] = T.max(mn[r], sc[jj, r])
                                for r in T.vectorized(R):
                                    al[r] = fast_exp(m[j, r] - mn[r])
                                    m[j, r] = mn[r]
                                    ls[j, r] = ls[j, r] * al[r]
                                for jj in T.serial(KT):
                                    for r in T.vectorized(R):
                                        sc[jj, r] = T.Select(
                                            sc[jj, r] > T.float32(NEG), fast_exp(sc[jj, r] - mn[r]), T.float32(0))
                                        ls[j, r] = ls[j, r] + sc[jj, r]
                                for r in T.serial(R):
                                    for e in T.vectorized(d):
                                        acc[j, r, e] = acc[j, r, e] * al[r]
                                    for jj in T.serial(KT):
                                        for e in T.vectorized(d):
                                            acc[j, r, e] = acc[j, r, e] + sc[jj, r] * T.Cast(
                                                "float32", V[bi, kh, T.min(glo + t * KT + jj, ghi - 1), e])
                    for j in T.serial(NB):
                        for r in T.serial(R):
                            if g0 + j * R + r <= last:
                                for e in T.vectorized(d):
                                    OUT[bi, kh * G + (g0 + j * R + r) % G, (g0 + j * R + r) // G, e] = T.Cast(dtype, acc[j, r, e] / ls[j, r])
    # fmt: on
    return attention


@kernel_memo
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
                q_loc = T.sblock_alloc_buffer((d,), "float32", scope=SCRATCH)
                acc = T.sblock_alloc_buffer((d,), "float32", scope=SCRATCH)
                part = T.sblock_alloc_buffer((lanes,), "float32", scope=SCRATCH)
                st = T.sblock_alloc_buffer((3,), "float32", scope=SCRATCH)  # sum, max, dot
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


@kernel_memo
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
                q_loc = T.sblock_alloc_buffer((d,), "float32", scope=SCRATCH)
                acc = T.sblock_alloc_buffer((d,), "float32", scope=SCRATCH)
                part = T.sblock_alloc_buffer((lanes,), "float32", scope=SCRATCH)
                st = T.sblock_alloc_buffer((6,), "float32", scope=SCRATCH)  # m/sum, l, m_new/max, p, dot, alpha
                ok = T.sblock_alloc_buffer((1,), "int32", scope=SCRATCH)
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


@kernel_memo
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
