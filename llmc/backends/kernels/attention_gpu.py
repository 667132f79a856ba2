"""Hand-written GPU attention kernels (TIR), for decode and prefill over a KV cache.

dlight has no schedule for attention with a symbolic key count and grouped heads, so these are
written out. Layout: q [b, h, s, d], k/v buffers [b, kvh, cap, d] of which the first ``t`` keys
are valid (``t`` is a scalar argument: the in-place KV cache of :mod:`llmc.backends.lower`), o [b,
h, s, d]; query ``i`` sees key ``j`` iff ``j <= i + t - s`` (causal, bottom-right) and ``i + t - s -
j < window`` (window > 0).

One thread block per query row ``(b, h, i)``. A row of ``d`` elements is spread over a warp
(``bdx`` lanes x ``vec`` elements), so every key row is one coalesced read; ``bdy`` warps take keys
in turn, each keeping its own online-softmax state, merged through shared memory at the end.

``attention_sync``: the synchronized (FlashAttention/FlashDecoding) softmax: running max, rescale.

``async_partials`` + ``async_combine``: the asynchronous softmax of FlashDecoding++ in split-KV
form. Blocks ``(row, chunk)`` accumulate ``sum e^(x - phi)`` and ``sum e^(x - phi) v`` over their
chunk of keys with the *unified* max ``phi`` (no running max, no rescaling) and record the chunk's
largest logit. The combine kernel checks every chunk's ``max x - phi`` against the safe range
``[lo, hi]`` (an overflow risk above ``hi``; below ``lo`` for all chunks the whole row would
underflow) and, when the row is in range, divides once; otherwise it recomputes that row with the
synchronized softmax (the fallback). The check is per row, uniform across the block.
"""

from __future__ import annotations

from tvm.script import tirx as T

from llmc.backends.kernels.memo import kernel_memo

NEG = -3.0e38  # finite "minus infinity": exp(NEG - m) == 0 without inf - inf = NaN


def warp_layout(d: int) -> tuple[int, int, int]:
    """(bdx lanes per key row, vec elements per lane, bdy warps)."""
    if d % 32 == 0:
        bdx, vec = 32, d // 32
    elif d <= 32 and (d & (d - 1)) == 0:
        bdx, vec = d, 1
    else:
        raise ValueError(
            f"head_dim {d}: the GPU attention kernels need a multiple of 32 or a power of 2 <= 32"
        )
    bdy = max(1, 128 // bdx)
    return bdx, vec, bdy


def key_bounds(causal: bool, window: int):
    """Functions giving the first visible key and one past the last, for a query at ``qpos``."""

    def k_hi(qpos, t):
        return T.min(qpos + 1, t) if causal else t

    def k_lo(qpos):
        return T.max(qpos - window + 1, T.int64(0)) if window > 0 else T.int64(0)

    return k_lo, k_hi


def logit(scale: float, softcap: float = 0.0):
    """The attention logit of a raw ``q . k``: ``scale * x``, soft-capped when ``softcap`` > 0
    (``softcap * tanh(scale * x / softcap)``, the IR's ``attention`` semantics)."""

    def f(x):
        y = x if scale == 1.0 else x * T.float32(scale)
        if softcap > 0:
            return T.float32(softcap) * T.tanh(y * T.float32(1.0 / softcap))
        return y

    return f


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
):
    group = h // kvh
    bdx, vec, bdy = warp_layout(d)
    key_lo, key_hi = key_bounds(causal, window)
    lg = logit(scale, softcap)

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
        for row in T.thread_binding(B * h * S, thread="blockIdx.x"):
            for ty in T.thread_binding(bdy, thread="threadIdx.y"):
                for tx in T.thread_binding(bdx, thread="threadIdx.x"):
                    with T.sblock("attn"):
                        T.reads()
                        T.writes()
                        q_loc = T.sblock_alloc_buffer((vec,), "float32", scope="local")
                        acc = T.sblock_alloc_buffer((vec,), "float32", scope="local")
                        part = T.sblock_alloc_buffer((1,), "float32", scope="local")
                        dot = T.sblock_alloc_buffer((1,), "float32", scope="local")
                        st = T.sblock_alloc_buffer((4,), "float32", scope="local")  # m, l, m_new, p
                        o_sh = T.sblock_alloc_buffer((bdy, d), "float32", scope="shared")
                        ml_sh = T.sblock_alloc_buffer((bdy, 2), "float32", scope="shared")
                        bi: T.let[T.int64] = row // (h * S)
                        hi: T.let[T.int64] = row // S % h
                        i: T.let[T.int64] = row % S
                        kh: T.let[T.int64] = hi // group
                        qpos: T.let[T.int64] = i + TT - S
                        k_hi: T.let[T.int64] = key_hi(qpos, TT)
                        k_lo: T.let[T.int64] = key_lo(qpos)
                        for e in T.serial(vec):
                            q_loc[e] = T.Cast("float32", Q[bi, hi, i, tx * vec + e])
                            acc[e] = T.float32(0)
                        st[0] = T.float32(NEG)
                        st[1] = T.float32(0)
                        for it in T.serial((k_hi - k_lo + bdy - 1) // bdy):
                            j: T.let[T.int64] = k_lo + it * bdy + ty
                            part[0] = T.float32(0)
                            if j < k_hi:
                                for e in T.serial(vec):
                                    part[0] = part[0] + q_loc[e] * T.Cast("float32", K[bi, kh, j, tx * vec + e])
                            with T.sblock("dot_allreduce"):
                                T.reads(part[0])
                                T.writes(dot[0])
                                T.attr(T.comm_reducer(lambda x0, y0: x0 + y0, [T.float32(0)]), "reduce_scope", T.int32(0))
                                T.tvm_thread_allreduce(T.uint32(1), part[0], True, dot[0], tx, dtype="void")
                            if j < k_hi:
                                st[2] = T.max(st[0], lg(dot[0]))
                                st[3] = T.exp(lg(dot[0]) - st[2])
                                for e in T.serial(vec):
                                    acc[e] = acc[e] * T.exp(st[0] - st[2]) + st[3] * T.Cast("float32", V[bi, kh, j, tx * vec + e])
                                st[1] = st[1] * T.exp(st[0] - st[2]) + st[3]
                                st[0] = st[2]
                        # merge the warps' states
                        for e in T.serial(vec):
                            o_sh[ty, tx * vec + e] = acc[e]
                        ml_sh[ty, 0] = st[0]
                        ml_sh[ty, 1] = st[1]
                        T.tvm_storage_sync("shared")
                        st[2] = T.float32(NEG)
                        for w in T.serial(bdy):
                            st[2] = T.max(st[2], ml_sh[w, 0])
                        st[1] = T.float32(0)
                        for e in T.serial(vec):
                            acc[e] = T.float32(0)
                        for w in T.serial(bdy):
                            st[3] = T.exp(ml_sh[w, 0] - st[2])
                            st[1] = st[1] + ml_sh[w, 1] * st[3]
                            for e in T.serial(vec):
                                acc[e] = acc[e] + o_sh[w, tx * vec + e] * st[3]
                        if ty == 0:
                            for e in T.serial(vec):
                                OUT[bi, hi, i, tx * vec + e] = T.Cast(dtype, acc[e] / st[1])
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
    """Per (row, chunk): ``sum e^(x-phi) v`` [d], ``sum e^(x-phi)`` and ``max x`` over the chunk."""
    group = h // kvh
    bdx, vec, bdy = warp_layout(d)
    key_lo, key_hi = key_bounds(causal, window)

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
        for row in T.thread_binding(B * h * S, thread="blockIdx.x"):
            for c in T.thread_binding(NC, thread="blockIdx.y"):
                for ty in T.thread_binding(bdy, thread="threadIdx.y"):
                    for tx in T.thread_binding(bdx, thread="threadIdx.x"):
                        with T.sblock("partials"):
                            T.reads()
                            T.writes()
                            q_loc = T.sblock_alloc_buffer((vec,), "float32", scope="local")
                            acc = T.sblock_alloc_buffer((vec,), "float32", scope="local")
                            part = T.sblock_alloc_buffer((1,), "float32", scope="local")
                            dot = T.sblock_alloc_buffer((1,), "float32", scope="local")
                            st = T.sblock_alloc_buffer((3,), "float32", scope="local")  # sum, max, p
                            o_sh = T.sblock_alloc_buffer((bdy, d), "float32", scope="shared")
                            sm_sh = T.sblock_alloc_buffer((bdy, 2), "float32", scope="shared")
                            bi: T.let[T.int64] = row // (h * S)
                            hi: T.let[T.int64] = row // S % h
                            i: T.let[T.int64] = row % S
                            kh: T.let[T.int64] = hi // group
                            qpos: T.let[T.int64] = i + TT - S
                            k_hi: T.let[T.int64] = T.min(key_hi(qpos, TT), (c + 1) * chunk)
                            k_lo: T.let[T.int64] = T.max(key_lo(qpos), c * chunk)
                            for e in T.serial(vec):
                                q_loc[e] = T.Cast("float32", Q[bi, hi, i, tx * vec + e])
                                acc[e] = T.float32(0)
                            st[0] = T.float32(0)
                            st[1] = T.float32(NEG)
                            for it in T.serial((T.max(k_hi - k_lo, T.int64(0)) + bdy - 1) // bdy):
                                j: T.let[T.int64] = k_lo + it * bdy + ty
                                part[0] = T.float32(0)
                                if j < k_hi:
                                    for e in T.serial(vec):
                                        part[0] = part[0] + q_loc[e] * T.Cast("float32", K[bi, kh, j, tx * vec + e])
                                with T.sblock("dot_allreduce"):
                                    T.reads(part[0])
                                    T.writes(dot[0])
                                    T.attr(T.comm_reducer(lambda x0, y0: x0 + y0, [T.float32(0)]), "reduce_scope", T.int32(0))
                                    T.tvm_thread_allreduce(T.uint32(1), part[0], True, dot[0], tx, dtype="void")
                                if j < k_hi:
                                    st[2] = T.exp(dot[0] * T.float32(scale) - T.float32(phi))
                                    st[1] = T.max(st[1], dot[0] * T.float32(scale))
                                    st[0] = st[0] + st[2]
                                    for e in T.serial(vec):
                                        acc[e] = acc[e] + st[2] * T.Cast("float32", V[bi, kh, j, tx * vec + e])
                            for e in T.serial(vec):
                                o_sh[ty, tx * vec + e] = acc[e]
                            sm_sh[ty, 0] = st[0]
                            sm_sh[ty, 1] = st[1]
                            T.tvm_storage_sync("shared")
                            if ty == 0:
                                for e in T.serial(vec):
                                    acc[e] = T.float32(0)
                                st[0] = T.float32(0)
                                st[1] = T.float32(NEG)
                                for w in T.serial(bdy):
                                    st[0] = st[0] + sm_sh[w, 0]
                                    st[1] = T.max(st[1], sm_sh[w, 1])
                                    for e in T.serial(vec):
                                        acc[e] = acc[e] + o_sh[w, tx * vec + e]
                                for e in T.serial(vec):
                                    PO[bi, hi, i, c, tx * vec + e] = acc[e]
                                if tx == 0:
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
    """Sum the partials of rows whose chunks all passed the range check; recompute the others
    with the synchronized softmax (one warp, keys in turn)."""
    group = h // kvh
    bdx, vec, _ = warp_layout(d)
    key_lo, key_hi = key_bounds(causal, window)

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
        for row in T.thread_binding(B * h * S, thread="blockIdx.x"):
            for tx in T.thread_binding(bdx, thread="threadIdx.x"):
                with T.sblock("combine"):
                    T.reads()
                    T.writes()
                    acc = T.sblock_alloc_buffer((vec,), "float32", scope="local")
                    q_loc = T.sblock_alloc_buffer((vec,), "float32", scope="local")
                    part = T.sblock_alloc_buffer((1,), "float32", scope="local")
                    dot = T.sblock_alloc_buffer((1,), "float32", scope="local")
                    st = T.sblock_alloc_buffer((4,), "float32", scope="local")  # m/sum, l, m_new/max, p
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
                        for e in T.serial(vec):
                            acc[e] = T.float32(0)
                        for c in T.serial(NC):
                            st[0] = st[0] + PS[bi, hh, i, c]
                            for e in T.serial(vec):
                                acc[e] = acc[e] + PO[bi, hh, i, c, tx * vec + e]
                        for e in T.serial(vec):
                            OUT[bi, hh, i, tx * vec + e] = T.Cast(dtype, acc[e] / st[0])
                    else:
                        # the fallback: synchronized online softmax over the row's keys
                        qpos: T.let[T.int64] = i + TT - S
                        k_hi: T.let[T.int64] = key_hi(qpos, TT)
                        k_lo: T.let[T.int64] = key_lo(qpos)
                        for e in T.serial(vec):
                            q_loc[e] = T.Cast("float32", Q[bi, hh, i, tx * vec + e])
                            acc[e] = T.float32(0)
                        st[0] = T.float32(NEG)
                        st[1] = T.float32(0)
                        for j in T.serial(k_hi - k_lo):
                            part[0] = T.float32(0)
                            for e in T.serial(vec):
                                part[0] = part[0] + q_loc[e] * T.Cast("float32", K[bi, kh, k_lo + j, tx * vec + e])
                            with T.sblock("dot_allreduce"):
                                T.reads(part[0])
                                T.writes(dot[0])
                                T.attr(T.comm_reducer(lambda x0, y0: x0 + y0, [T.float32(0)]), "reduce_scope", T.int32(0))
                                T.tvm_thread_allreduce(T.uint32(1), part[0], True, dot[0], tx, dtype="void")
                            st[2] = T.max(st[0], dot[0] * T.float32(scale))
                            st[3] = T.exp(dot[0] * T.float32(scale) - st[2])
                            for e in T.serial(vec):
                                acc[e] = acc[e] * T.exp(st[0] - st[2]) + st[3] * T.Cast("float32", V[bi, kh, k_lo + j, tx * vec + e])
                            st[1] = st[1] * T.exp(st[0] - st[2]) + st[3]
                            st[0] = st[2]
                        for e in T.serial(vec):
                            OUT[bi, hh, i, tx * vec + e] = T.Cast(dtype, acc[e] / st[1])
    # fmt: on
    return combine


@kernel_memo
def kv_append(kvh: int, d: int, dtype: str):
    """Write ``new`` [b, kvh, s, d] into the cache [b, kvh, cap, d] at keys ``past .. past+s``,
    in place (``call_tir_inplace``): one block per key row, a thread per element (``d`` <= 1024);
    a key at or past ``cap`` is dropped, never written out of bounds."""

    # fmt: off
    @T.prim_func(s_tir=True)
    def kv_append(c_h: T.handle, x_h: T.handle, past: T.int64):
        T.func_attr({"tirx.is_scheduled": True, "tirx.noalias": True})
        B = T.int64()
        CAP = T.int64()
        S = T.int64()
        C = T.match_buffer(c_h, (B, kvh, CAP, d), dtype)
        X = T.match_buffer(x_h, (B, kvh, S, d), dtype)
        for row in T.thread_binding(B * kvh * S, thread="blockIdx.x"):
            for e in T.thread_binding(d, thread="threadIdx.x"):
                with T.sblock("kv_append"):
                    T.reads()
                    T.writes()
                    bi: T.let[T.int64] = row // (kvh * S)
                    hi: T.let[T.int64] = row // S % kvh
                    i: T.let[T.int64] = row % S
                    if past + i < CAP:
                        C[bi, hi, past + i, e] = X[bi, hi, i, e]
    # fmt: on
    return kv_append
