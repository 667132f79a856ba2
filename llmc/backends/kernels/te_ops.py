"""Tensor-expression (TE) definitions of the LLM ops, shared by every target.

These are *unscheduled* computations: on GPUs dlight schedules them after Relax fuses their
epilogues; on the CPU they run as plain loops except where :mod:`llmc.backends.kernels.cpu`
supplies a scheduled kernel. Each function mirrors the reference semantics in
:mod:`llmc.ir.ops` (float32 inside norms and softmax, rounding to the activation dtype where the
reference rounds).
"""

from __future__ import annotations

from typing import Any

from tvm import te, tirx

F32 = "float32"


def _f32(x: Any) -> Any:
    return x.astype(F32) if x.dtype != F32 else x


# -- norms ----------------------------------------------------------------------------------------


def rms_norm(x: te.Tensor, w: te.Tensor | None, eps: float) -> te.Tensor:
    dt = x.dtype
    d = x.shape[-1]
    k = te.reduce_axis((0, d), "k")
    lead = list(x.shape[:-1])
    ss = te.compute(
        lead, lambda *i: te.sum(_f32(x[(*i, k)]) * _f32(x[(*i, k)]), axis=k), name="rms_sumsq"
    )

    def f(*idx: Any) -> Any:
        i = idx[:-1]
        inv = tirx.rsqrt(ss[i] / tirx.Cast(F32, d) + tirx.const(eps, F32))
        h = (_f32(x[idx]) * inv).astype(dt)
        return h * w[idx[-1]].astype(dt) if w is not None else h

    return te.compute(x.shape, f, name="rms_norm")


def layer_norm(x: te.Tensor, w: te.Tensor | None, b: te.Tensor | None, eps: float) -> te.Tensor:
    dt = x.dtype
    d = x.shape[-1]
    lead = list(x.shape[:-1])
    k1 = te.reduce_axis((0, d), "k1")
    k2 = te.reduce_axis((0, d), "k2")
    s1 = te.compute(lead, lambda *i: te.sum(_f32(x[(*i, k1)]), axis=k1), name="ln_sum")
    s2 = te.compute(
        lead, lambda *i: te.sum(_f32(x[(*i, k2)]) * _f32(x[(*i, k2)]), axis=k2), name="ln_sumsq"
    )

    def f(*idx: Any) -> Any:
        i = idx[:-1]
        n = tirx.Cast(F32, d)
        mean = s1[i] / n
        var = tirx.max(s2[i] / n - mean * mean, tirx.const(0.0, F32))
        h = (_f32(x[idx]) - mean) * tirx.rsqrt(var + tirx.const(eps, F32))
        if w is not None:
            h = h * _f32(w[idx[-1]])
        if b is not None:
            h = h + _f32(b[idx[-1]])
        return h.astype(dt)

    return te.compute(x.shape, f, name="layer_norm")


# -- rotary embedding -----------------------------------------------------------------------------


def rope_cos_sin(pos: te.Tensor, inv_freq: te.Tensor, mscale: float) -> te.Tensor:
    """``[b, s, 2, rotary_dim/2]`` float32: ``cos`` (row 0) and ``sin`` (row 1) of the angles at
    positions ``pos`` [b, s], times ``mscale``. One per position, not per head and dimension:
    :func:`rope` reads them, so its own loop has no libm call and vectorizes (one per function
    for all its ropes, rules.py)."""
    half = inv_freq.shape[0]

    def f(b: Any, s: Any, k: Any, i: Any) -> Any:
        freq = pos[b, s].astype(F32) * inv_freq[i]
        trig = tirx.if_then_else(k == 0, tirx.cos(freq), tirx.sin(freq))
        return trig * tirx.const(mscale, F32)

    return te.compute((pos.shape[0], pos.shape[1], 2, half), f, name="rope_cos_sin")


def rope(
    x: te.Tensor,
    pos: te.Tensor,
    inv_freq: te.Tensor,
    rotary_dim: int,
    interleaved: bool,
    mscale: float,
    cos_sin: te.Tensor | None = None,
) -> te.Tensor:
    """x [b, h, s, d] at positions [b, s]; ``inv_freq`` [rotary_dim/2] float32 (precomputed).
    With ``cos_sin`` (:func:`rope_cos_sin` of the same positions) the angles are read, not
    computed: the same float32 values, bit for bit."""
    dt = x.dtype
    half = rotary_dim // 2
    head_dim = x.shape[3]

    def f(b: Any, h: Any, s: Any, d: Any) -> Any:
        if interleaved:
            i = tirx.min(d // 2, half - 1)
            partner = tirx.if_then_else(d % 2 == 0, d + 1, d - 1)
            sign_neg = d % 2 == 0
        else:
            i = tirx.floormod(d, half)
            partner = tirx.if_then_else(d < half, d + half, d - half)
            sign_neg = d < half
        if cos_sin is not None:
            c = cos_sin[b, s, 0, i].astype(dt)
            sn = cos_sin[b, s, 1, i].astype(dt)
        else:
            freq = pos[b, s].astype(F32) * inv_freq[i]
            c = (tirx.cos(freq) * tirx.const(mscale, F32)).astype(dt)
            sn = (tirx.sin(freq) * tirx.const(mscale, F32)).astype(dt)
        other = x[b, h, s, tirx.min(partner, rotary_dim - 1)]
        rot = tirx.if_then_else(sign_neg, -other, other)
        out = x[b, h, s, d] * c + rot * sn
        if isinstance(head_dim, int) and rotary_dim == head_dim:
            return out
        return tirx.if_then_else(d < rotary_dim, out, x[b, h, s, d])

    return te.compute(x.shape, f, name="rope")


def silu_fast(x: te.Tensor) -> te.Tensor:
    """``x * sigmoid(x)`` with TOPI's polynomial ``fast_exp`` (clamped to float32's range)
    instead of libm's ``expf``: vectorizes on the CPU."""
    from tvm import topi

    dt = x.dtype

    def f(*idx: Any) -> Any:
        v = _f32(x[idx])
        return v

    xf = te.compute(x.shape, f, name="silu_in") if dt != F32 else x
    e = topi.fast_exp(-xf)
    return te.compute(
        x.shape, lambda *i: (xf[i] / (tirx.const(1.0, F32) + e[i])).astype(dt), name="silu"
    )


# -- attention ------------------------------------------------------------------------------------


def visible(i: Any, j: Any, s: Any, t: Any, causal: bool, window: int) -> Any:
    """Bottom-right aligned causal / sliding-window visibility of key ``j`` from query ``i``."""
    cond = tirx.const(True, "bool")
    qpos = i + t - s
    if causal:
        cond = tirx.all(cond, j <= qpos)
    if window > 0:
        cond = tirx.all(cond, qpos - j < window)
    return cond


def attn_qk(q: te.Tensor, k: te.Tensor) -> te.Tensor:
    """``q . k`` in float32 for grouped queries: q [b, kvh, g*s, d] (the g query heads that share
    a kv head stacked along rows), k [b, kvh, t, d] -> [b, kvh, g*s, t].

    A plain batched matrix product (no head broadcast in the indexing), so GPU schedules see a
    batched GEMV; scaling and masking happen in :func:`masked_softmax`.
    """
    b, kvh, rows, d = q.shape
    t = k.shape[2]
    r = te.reduce_axis((0, d), "r")
    return te.compute(
        (b, kvh, rows, t),
        lambda bi, hi, i, j: te.sum(_f32(q[bi, hi, i, r]) * _f32(k[bi, hi, j, r]), axis=r),
        name="attn_qk",
    )


def masked_softmax(
    qk: te.Tensor,
    s: Any,
    scale: float,
    causal: bool,
    window: int,
    out_dtype: str,
    softcap: float = 0.0,
) -> te.Tensor:
    """Softmax over keys of ``scale * qk`` ([b, kvh, g*s, t], query row ``r`` is position
    ``r % s``) with invisible keys excluded, in float32, rounded to ``out_dtype`` (the
    reference's ``softmax(..., dtype=float32).to(q.dtype)``); ``softcap`` > 0 soft-caps the
    scaled logits first (``softcap * tanh(x / softcap)``)."""
    b, h, rows, t = qk.shape

    def sc_(x: Any) -> Any:
        y = x * tirx.const(scale, F32)
        if softcap > 0:
            y = tirx.const(softcap, F32) * tirx.tanh(y * tirx.const(1.0 / softcap, F32))
        return y

    def vis(r: Any, j: Any) -> Any:
        return visible(tirx.floormod(r, s), j, s, t, causal, window)

    j1 = te.reduce_axis((0, t), "j1")
    mx = te.compute(
        (b, h, rows),
        lambda bi, hi, i: te.max(
            tirx.if_then_else(vis(i, j1), sc_(qk[bi, hi, i, j1]), tirx.min_value(F32)), axis=j1
        ),
        name="softmax_max",
    )
    e = te.compute(
        (b, h, rows, t),
        lambda bi, hi, i, j: tirx.if_then_else(
            vis(i, j), tirx.exp(sc_(qk[bi, hi, i, j]) - mx[bi, hi, i]), tirx.const(0.0, F32)
        ),
        name="softmax_exp",
    )
    j2 = te.reduce_axis((0, t), "j2")
    den = te.compute(
        (b, h, rows), lambda bi, hi, i: te.sum(e[bi, hi, i, j2], axis=j2), name="softmax_sum"
    )
    return te.compute(
        (b, h, rows, t),
        lambda bi, hi, i, j: (e[bi, hi, i, j] / den[bi, hi, i]).astype(out_dtype),
        name="softmax_norm",
    )


def attn_pv(p: te.Tensor, v: te.Tensor, out_dtype: str) -> te.Tensor:
    """``p @ v`` for probabilities [b, kvh, g*s, t] (activation dtype) and v [b, kvh, t, d]."""
    b, h, rows, t = p.shape
    d = v.shape[3]
    j = te.reduce_axis((0, t), "j")
    acc = te.compute(
        (b, h, rows, d),
        lambda bi, hi, i, e: te.sum(_f32(p[bi, hi, i, j]) * _f32(v[bi, hi, j, e]), axis=j),
        name="attn_pv",
    )
    if out_dtype == F32:
        return acc
    return te.compute(acc.shape, lambda *i: acc[i].astype(out_dtype), name="attn_out")


# -- linear layers --------------------------------------------------------------------------------


def linear_dense(x: te.Tensor, w: te.Tensor, out_dtype: str) -> te.Tensor:
    """``x [..., K] @ w[N, K].T`` accumulated in float32 (int32 for integer inputs)."""
    n, kdim = w.shape
    k = te.reduce_axis((0, kdim), "k")
    acc_dt = F32
    lead = list(x.shape[:-1])
    y = te.compute(
        (*lead, n),
        lambda *i: te.sum(x[(*i[:-1], k)].astype(acc_dt) * w[i[-1], k].astype(acc_dt), axis=k),
        name="linear",
    )
    if out_dtype == acc_dt:
        return y
    return te.compute(y.shape, lambda *i: y[i].astype(out_dtype), name="linear_cast")


def linear_q4(
    x: te.Tensor,
    codes: te.Tensor,
    scale: te.Tensor,
    offset: te.Tensor,
    group: int,
    out_dtype: str,
) -> te.Tensor:
    """W4A16 group-wise: ``w[n, k] = (nibble(codes[n, k/2], k%2) - offset[n, k/g]) * scale``.

    The dequantization sits inside the reduction, so the weight is read once, packed.
    """
    n = codes.shape[0]
    kdim = codes.shape[1] * 2
    k = te.reduce_axis((0, kdim), "k")
    lead = list(x.shape[:-1])

    def wval(nn: Any, kk: Any) -> Any:
        byte = codes[nn, kk // 2]
        nib = (byte >> (kk % 2 * 4).astype("uint8")) & tirx.const(15, "uint8")
        g = kk // group
        return (nib.astype(F32) - _f32(offset[nn, g])) * _f32(scale[nn, g])

    y = te.compute(
        (*lead, n),
        lambda *i: te.sum(_f32(x[(*i[:-1], k)]) * wval(i[-1], k), axis=k),
        name="linear_q4",
    )
    if out_dtype == F32:
        return y
    return te.compute(y.shape, lambda *i: y[i].astype(out_dtype), name="linear_q4_cast")


def linear_q8g(
    x: te.Tensor,
    codes: te.Tensor,
    scale: te.Tensor,
    offset: te.Tensor,
    group: int,
    out_dtype: str,
) -> te.Tensor:
    """5..8-bit group-wise weight-only: ``w[n, k] = (codes[n, k] - offset[n, k/g]) * scale``."""
    n, kdim = codes.shape
    k = te.reduce_axis((0, kdim), "k")
    lead = list(x.shape[:-1])

    def wval(nn: Any, kk: Any) -> Any:
        g = kk // group
        return (codes[nn, kk].astype(F32) - _f32(offset[nn, g])) * _f32(scale[nn, g])

    y = te.compute(
        (*lead, n),
        lambda *i: te.sum(_f32(x[(*i[:-1], k)]) * wval(i[-1], k), axis=k),
        name="linear_q8g",
    )
    if out_dtype == F32:
        return y
    return te.compute(y.shape, lambda *i: y[i].astype(out_dtype), name="linear_q8g_cast")


def linear_nm(
    x: te.Tensor, values: te.Tensor, index: te.Tensor, n_keep: int, m: int, out_dtype: str
) -> te.Tensor:
    """N:M sparse: only the stored non-zeros are multiplied; ``x`` is gathered by position."""
    n = values.shape[0]
    kk_dim = values.shape[1]
    kk = te.reduce_axis((0, kk_dim), "kk")
    lead = list(x.shape[:-1])

    def col(r: Any, c: Any) -> Any:
        return (c // n_keep) * m + index[r, c].astype("int64")

    y = te.compute(
        (*lead, n),
        lambda *i: te.sum(_f32(x[(*i[:-1], col(i[-1], kk))]) * _f32(values[i[-1], kk]), axis=kk),
        name="linear_nm",
    )
    if out_dtype == F32:
        return y
    return te.compute(y.shape, lambda *i: y[i].astype(out_dtype), name="linear_nm_cast")


# -- W8A8 -----------------------------------------------------------------------------------------

A8_QMAX = 127.0


def act_quant(x: te.Tensor, act_scale: float) -> tuple[te.Tensor, te.Tensor]:
    """Per-token int8 quantization (``qlinear_a8`` steps 1-2): codes [M, K] and scales [M]."""
    m, kdim = x.shape
    if act_scale > 0:
        s = te.compute((m,), lambda i: tirx.const(act_scale, F32), name="a8_scale")
    else:
        k = te.reduce_axis((0, kdim), "k")
        amax = te.compute((m,), lambda i: te.max(tirx.abs(_f32(x[i, k])), axis=k), name="a8_amax")
        s = te.compute(
            (m,),
            lambda i: tirx.max(amax[i], tirx.const(1e-8, F32)) / tirx.const(A8_QMAX, F32),
            name="a8_scale",
        )

    def q(i: Any, j: Any) -> Any:
        v = tirx.round(_f32(x[i, j]) / s[i])  # round half to even, as torch.round
        v = tirx.max(tirx.min(v, tirx.const(A8_QMAX, F32)), tirx.const(-A8_QMAX, F32))
        return v.astype("int8")

    return te.compute((m, kdim), q, name="a8_codes"), s


def int8_linear(
    xq: te.Tensor, xs: te.Tensor, wq: te.Tensor, ws: te.Tensor, out_dtype: str
) -> te.Tensor:
    """``float32(sum int8*int8 -> int32) * s_x[m] * s_w[n]``."""
    m = xq.shape[0]
    n, kdim = wq.shape
    k = te.reduce_axis((0, kdim), "k")
    acc = te.compute(
        (m, n),
        lambda i, j: te.sum(xq[i, k].astype("int32") * wq[j, k].astype("int32"), axis=k),
        name="a8_gemm",
    )
    return te.compute(
        (m, n),
        lambda i, j: (acc[i, j].astype(F32) * xs[i] * ws[j]).astype(out_dtype),
        name="a8_rescale",
    )


# -- select ---------------------------------------------------------------------------------------

#: the unsigned integer type of each float type's bits
_BITS = {"float32": "uint32", "float16": "uint16", "bfloat16": "uint16", "float64": "uint64"}
_WIDTH = {"uint16": 2, "uint32": 4, "uint64": 8}


def _broadcast_index(t: te.Tensor, out_rank: int, idx: tuple[Any, ...]) -> tuple[Any, ...]:
    """``t``'s element for the output index ``idx`` under numpy broadcasting (right-aligned,
    size-1 axes repeat)."""
    lead = out_rank - len(t.shape)
    return tuple(
        0 if isinstance(d, tirx.IntImm) and d.value == 1 else idx[lead + a]
        for a, d in enumerate(t.shape)
    )


def _broadcast_shape(*ts: te.Tensor) -> list[Any]:
    rank = max(len(t.shape) for t in ts)
    out: list[Any] = []
    for a in range(rank):
        dims = [t.shape[a - rank + len(t.shape)] for t in ts if a - rank + len(t.shape) >= 0]
        big = [d for d in dims if not (isinstance(d, tirx.IntImm) and d.value == 1)]
        out.append(big[0] if big else dims[0])
    return out


def where_bits(c: te.Tensor, x: te.Tensor, y: te.Tensor) -> te.Tensor:
    """``where(c, x, y)`` for float ``x``, ``y`` as a bitwise select on their bits:
    ``(x & m) | (y & ~m)`` with ``m`` all ones where ``c`` holds. Bit-exact with ``where``
    (NaN payloads and signed zeros included); used on CUDA, where TVM 0.27 vectorizes a select on
    a bool tensor into ``float2 v = make_ushort2(...)``, which nvcc rejects."""
    dt = str(x.dtype)
    ut = _BITS[dt]
    out_shape = _broadcast_shape(c, x, y)
    rank = len(out_shape)

    def f(*i: Any) -> Any:
        keep = c[_broadcast_index(c, rank, i)].astype(ut)
        # all ones or zero (as a product: TVM's simplifier folds ``0 - keep`` on unsigned types
        # to 0)
        m = keep * tirx.const((1 << (8 * _WIDTH[ut])) - 1, ut)
        xb = tirx.reinterpret(ut, x[_broadcast_index(x, rank, i)])
        yb = tirx.reinterpret(ut, y[_broadcast_index(y, rank, i)])
        return tirx.reinterpret(dt, (xb & m) | (yb & ~m))

    return te.compute(out_shape, f, name="where_bits")
