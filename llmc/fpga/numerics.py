"""The accelerator's arithmetic, defined operation by operation in float32.

This is the contract the functional simulator (numpy) and the HLS C++ kernels both implement, so
that they agree bit for bit: every function below is a fixed sequence of IEEE-754 float32
operations, each correctly rounded (``+ - * /``, ``sqrt``, ``floor``, ``ldexp``), with no fused
multiply-add and no library transcendental. Sums run sequentially, left to right, in the order
the docstrings state. The C++ side (``llmc/fpga/templates/sfu.h.tmpl``) is written from the same
text; the constants are emitted from :data:`CONSTANTS` as hexadecimal float literals.

Error bounds versus exact arithmetic (u = 2^-24), derived in docs/fpga.md:

- ``exp32``: range reduction ``x = n ln2 + r`` (ln2 split in two, ``|r| <= ln2/2``), a degree-7
  Taylor polynomial (truncation below 5e-9 relative) and an exact ``ldexp``: about 4 u relative;
- ``silu``/``sigmoid``: exp32 plus one add and one divide; ``tanh32`` as ``1 - 2/(e^2x + 1)``
  (absolute error a few u); ``erf32`` Abramowitz-Stegun 7.1.26 (absolute error <= 1.5e-7);
- a length-K sequential dot product: ``|fl(s) - s| <= gamma_K * sum|x_i w_i|`` with
  ``gamma_K = K u / (1 - K u)`` (Higham, Accuracy and Stability, Thm 3.1).
"""

from __future__ import annotations

import numpy as np

f32 = np.float32

CONSTANTS: dict[str, float] = {
    "LOG2E": float(f32(1.4426950408889634)),
    "LN2_HI": float(f32(0.693145751953125)),  # 16 significant bits: n * LN2_HI is exact
    "LN2_LO": float(f32(1.4286067653302226e-06)),
    "EXP_LO": float(f32(-87.33654)),  # below: 0 (no subnormal results)
    "EXP_HI": float(f32(88.72283)),  # above: +inf
    "C2": float(f32(1 / 2)),
    "C3": float(f32(1 / 6)),
    "C4": float(f32(1 / 24)),
    "C5": float(f32(1 / 120)),
    "C6": float(f32(1 / 720)),
    "C7": float(f32(1 / 5040)),
    "GELU_K0": float(f32(0.7978845608028654)),  # sqrt(2/pi)
    "GELU_K1": float(f32(0.044715)),
    "INV_SQRT2": float(f32(0.7071067811865476)),
    "ERF_P": float(f32(0.3275911)),
    "ERF_A1": float(f32(0.254829592)),
    "ERF_A2": float(f32(-0.284496736)),
    "ERF_A3": float(f32(1.421413741)),
    "ERF_A4": float(f32(-1.453152027)),
    "ERF_A5": float(f32(1.061405429)),
}
K = {k: f32(v) for k, v in CONSTANTS.items()}
ONE, HALF, TWO, ZERO = f32(1.0), f32(0.5), f32(2.0), f32(0.0)


def exp32(x: np.ndarray) -> np.ndarray:
    """``e^x``: n = floor(x*LOG2E + 0.5); r = (x - n*LN2_HI) - n*LN2_LO; Horner
    ``((((((C7 r + C6) r + C5) r + C4) r + C3) r + C2) r + 1) r + 1``; ldexp(p, n).
    NaN -> NaN, x < EXP_LO -> 0, x > EXP_HI -> inf."""
    x = np.asarray(x, dtype=f32)
    ok = (x >= K["EXP_LO"]) & (x <= K["EXP_HI"])
    xc = np.where(ok, x, ZERO).astype(f32)
    n = np.floor(xc * K["LOG2E"] + HALF).astype(f32)
    r = (xc - n * K["LN2_HI"]).astype(f32)
    r = (r - n * K["LN2_LO"]).astype(f32)
    p = K["C7"]
    for c in (K["C6"], K["C5"], K["C4"], K["C3"], K["C2"], ONE, ONE):
        p = ((p * r).astype(f32) + c).astype(f32)
    res = np.ldexp(p, n.astype(np.int32)).astype(f32)
    res = np.where(x > K["EXP_HI"], f32(np.inf), res)
    res = np.where(x < K["EXP_LO"], ZERO, res)
    return np.where(np.isnan(x), x, res).astype(f32)


def sigmoid32(x: np.ndarray) -> np.ndarray:
    return (ONE / (ONE + exp32(-x))).astype(f32)


def silu32(x: np.ndarray) -> np.ndarray:
    """``x / (1 + exp32(-x))``."""
    return (x / (ONE + exp32(-x))).astype(f32)


def tanh32(x: np.ndarray) -> np.ndarray:
    """``1 - 2 / (exp32(2x) + 1)``."""
    return (ONE - TWO / (exp32((TWO * x).astype(f32)) + ONE)).astype(f32)


def relu32(x: np.ndarray) -> np.ndarray:
    return np.where(x > ZERO, x, ZERO).astype(f32)


def erf32(z: np.ndarray) -> np.ndarray:
    """Abramowitz-Stegun 7.1.26: ``t = 1/(1 + P a)``, ``y = 1 - poly(t) * exp32(-a*a)``."""
    a = np.abs(z).astype(f32)
    t = (ONE / (ONE + K["ERF_P"] * a)).astype(f32)
    p = K["ERF_A5"]
    for c in (K["ERF_A4"], K["ERF_A3"], K["ERF_A2"], K["ERF_A1"]):
        p = ((p * t).astype(f32) + c).astype(f32)
    p = (p * t).astype(f32)
    y = (ONE - p * exp32(-(a * a).astype(f32))).astype(f32)
    return np.where(z < ZERO, -y, y).astype(f32)


def gelu32(x: np.ndarray) -> np.ndarray:
    """``(0.5 x) * (1 + erf32(x * INV_SQRT2))``."""
    return ((HALF * x).astype(f32) * (ONE + erf32((x * K["INV_SQRT2"]).astype(f32)))).astype(f32)


def gelu_tanh32(x: np.ndarray) -> np.ndarray:
    """``(0.5 x) * (1 + tanh32(K0 * (x + K1 * ((x*x)*x))))``."""
    x3 = ((x * x).astype(f32) * x).astype(f32)
    inner = (x + (K["GELU_K1"] * x3).astype(f32)).astype(f32)
    return ((HALF * x).astype(f32) * (ONE + tanh32((K["GELU_K0"] * inner).astype(f32)))).astype(f32)


def seq_sum(cols: np.ndarray) -> np.ndarray:
    """Sequential left-to-right sum over the last axis, starting from +0.0."""
    acc = np.zeros(cols.shape[:-1], dtype=f32)
    for j in range(cols.shape[-1]):
        acc = (acc + cols[..., j]).astype(f32)
    return acc


def rmsnorm32(x: np.ndarray, g: np.ndarray | None, eps: float) -> np.ndarray:
    """Per row: ``ss = sum x_j*x_j`` (sequential); ``r = 1 / sqrt(ss / D + eps)``;
    ``out = (x * r) * g`` (``g`` None: ``x * r``)."""
    d = f32(x.shape[-1])
    ss = seq_sum((x * x).astype(f32))
    r = (ONE / np.sqrt(((ss / d).astype(f32) + f32(eps)).astype(f32))).astype(f32)
    y = (x * r[..., None]).astype(f32)
    return y if g is None else (y * g).astype(f32)


def layernorm32(
    x: np.ndarray, g: np.ndarray | None, b: np.ndarray | None, eps: float
) -> np.ndarray:
    """Per row: ``mean = sum x / D``; ``var = sum (x-mean)^2 / D`` (sequential sums);
    ``r = 1 / sqrt(var + eps)``; ``out = ((x - mean) * r) * g + b`` (a None ``g`` / ``b``
    skips its step)."""
    d = f32(x.shape[-1])
    mean = (seq_sum(x) / d).astype(f32)
    xc = (x - mean[..., None]).astype(f32)
    var = (seq_sum((xc * xc).astype(f32)) / d).astype(f32)
    r = (ONE / np.sqrt((var + f32(eps)).astype(f32))).astype(f32)
    y = (xc * r[..., None]).astype(f32)
    if g is not None:
        y = (y * g).astype(f32)
    return y if b is None else (y + b).astype(f32)


def softmax32(s: np.ndarray, visible: np.ndarray | None, scale: float) -> np.ndarray:
    """Per row: ``v = s * scale`` (invisible -> -inf); ``m = max v``; ``e = exp32(v - m)``;
    ``p = e / sum e`` (sequential sum). A row with nothing visible gives zeros."""
    v = (s * f32(scale)).astype(f32) if scale != 1.0 else s.astype(f32)
    if visible is not None:
        v = np.where(visible, v, f32(-np.inf)).astype(f32)
    m = np.max(v, axis=-1, keepdims=True)
    m = np.where(np.isneginf(m), ZERO, m).astype(f32)
    e = exp32((v - m).astype(f32))
    tot = seq_sum(e)
    # nothing visible: every e is 0 and so is the sum; dividing by 1 keeps the zeros
    return (e / np.where(tot == ZERO, ONE, tot)[..., None]).astype(f32)


def rope32(
    x: np.ndarray, cos: np.ndarray, sin: np.ndarray, rd: int, interleaved: bool
) -> np.ndarray:
    """``out[:rd] = x*cos + rot(x)*sin`` with ``rot`` the half (or pair) rotation; the rest of the
    row is copied. Elementwise, hence bit-identical to the interpreter's rope."""
    xr = x[..., :rd]
    if interleaved:
        rot = np.empty_like(xr)
        rot[..., 0::2] = -xr[..., 1::2]
        rot[..., 1::2] = xr[..., 0::2]
    else:
        h = rd // 2
        rot = np.concatenate([-xr[..., h:], xr[..., :h]], axis=-1)
    out = x.copy()
    out[..., :rd] = ((xr * cos).astype(f32) + (rot * sin).astype(f32)).astype(f32)
    return out.astype(f32)


UNARY = {
    "silu": silu32,
    "gelu": gelu32,
    "gelu_tanh": gelu_tanh32,
    "relu": relu32,
    "sigmoid": sigmoid32,
    "tanh": tanh32,
    "exp": exp32,
}


# -- FFN-skip's saturation test on chip (lower_cond.py): cosine similarity, compares, select ----


def seq_max(cols: np.ndarray) -> np.ndarray:
    """Sequential max over the last axis from -inf; a NaN sticks (as torch.amax propagates it)."""
    m = np.full(cols.shape[:-1], -np.inf, dtype=f32)
    for j in range(cols.shape[-1]):
        v = cols[..., j]
        m = np.where(np.isnan(v) | (v > m), v, m).astype(f32)
    return m


def maxc32(x: np.ndarray, c: float) -> np.ndarray:
    """``max(x, c)``, NaN in ``x`` propagating: ``x != x or x > c ? x : c``."""
    return np.where(np.isnan(x) | (x > f32(c)), x, f32(c)).astype(f32)


def sqrt32(x: np.ndarray) -> np.ndarray:
    """Correctly rounded float32 square root (IEEE-754; a negative gives NaN)."""
    with np.errstate(invalid="ignore"):
        return np.sqrt(x.astype(f32)).astype(f32)


COMPARE = {
    "gt": np.greater,
    "ge": np.greater_equal,
    "lt": np.less,
    "le": np.less_equal,
}


def compare32(name: str, a: np.ndarray, b: np.ndarray | float) -> np.ndarray:
    """``1.0`` where ``a <op> b`` holds, else ``0.0`` (NaN compares false)."""
    return np.where(COMPARE[name](a, b), ONE, ZERO).astype(f32)


def select32(c: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``c != 0 ? a : b`` (a NaN condition selects ``a``, as a bool cast of NaN is true)."""
    return np.where(c != ZERO, a, b).astype(f32)
