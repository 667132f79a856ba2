"""Tensor types with symbolic dimensions.

A dimension is a plain ``int`` or a :class:`SymDim`: a polynomial with integer coefficients over
named sizes (``batch``, ``seq``, ``past``, ...). Polynomials are what shape rules produce:
concatenating a cache of ``past`` positions with ``seq`` new ones gives ``past + seq``; flattening
``[batch, seq, 256]`` gives ``batch*seq``. A ``SymDim`` that reduces to a constant is returned as
an ``int``, so ``Dim`` values compare with ``==`` structurally.

Text form: ``f32[batch, seq, 256]``, ``i64[batch, past + seq]``, ``f16[batch*seq, 4096]``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Union

import torch

from llmc.errors import IRError

# A monomial is a sorted tuple of symbol names (with repetition for powers); () is the constant.
Monomial = tuple[str, ...]

_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


@dataclass(frozen=True)
class SymDim:
    """A symbolic size: ``sum(coef * prod(symbols))``. Construct with :func:`sym`."""

    terms: tuple[tuple[Monomial, int], ...]  # sorted, no zero coefficients

    @staticmethod
    def _make(terms: Mapping[Monomial, int]) -> Dim:
        items = tuple(sorted((m, c) for m, c in terms.items() if c != 0))
        if not items:
            return 0
        if len(items) == 1 and items[0][0] == ():
            return items[0][1]
        return SymDim(items)

    def _dict(self) -> dict[Monomial, int]:
        return dict(self.terms)

    @property
    def symbols(self) -> frozenset[str]:
        return frozenset(s for m, _ in self.terms for s in m)

    def __add__(self, other: Dim) -> Dim:
        return dim_add(self, other)

    __radd__ = __add__

    def __mul__(self, other: Dim) -> Dim:
        return dim_mul(self, other)

    __rmul__ = __mul__

    def evaluate(self, env: Mapping[str, int]) -> int:
        total = 0
        for mono, coef in self.terms:
            v = coef
            for s in mono:
                if s not in env:
                    raise IRError(f"symbolic dimension '{s}' has no value (known: {sorted(env)})")
                v *= env[s]
            total += v
        return total

    def __str__(self) -> str:
        parts = []
        # Highest-degree first, constants last: "past + seq + 1".
        for mono, coef in sorted(self.terms, key=lambda t: (-len(t[0]), t[0])):
            body = "*".join(mono)
            if not mono:
                parts.append(str(coef))
            elif coef == 1:
                parts.append(body)
            else:
                parts.append(f"{coef}*{body}")
        out = " + ".join(parts)
        return out.replace("+ -", "- ")

    def __repr__(self) -> str:
        return f"sym({str(self)!r})"


Dim = Union[int, SymDim]  # noqa: UP007  (used at runtime in isinstance-free code paths)


def _as_terms(d: Dim) -> dict[Monomial, int]:
    if isinstance(d, SymDim):
        return d._dict()
    if isinstance(d, bool) or not isinstance(d, int):
        raise IRError(f"not a dimension: {d!r}")
    return {(): d}


def dim_add(a: Dim, b: Dim) -> Dim:
    terms = _as_terms(a)
    for m, c in _as_terms(b).items():
        terms[m] = terms.get(m, 0) + c
    return SymDim._make(terms)


def dim_sub(a: Dim, b: Dim) -> Dim:
    return dim_add(a, dim_mul(b, -1))


def dim_mul(a: Dim, b: Dim) -> Dim:
    out: dict[Monomial, int] = {}
    for ma, ca in _as_terms(a).items():
        for mb, cb in _as_terms(b).items():
            m = tuple(sorted(ma + mb))
            out[m] = out.get(m, 0) + ca * cb
    return SymDim._make(out)


def dim_floordiv(a: Dim, b: int) -> Dim:
    """Exact division of a dimension by a positive integer; raises if not divisible."""
    terms = _as_terms(a)
    if b <= 0 or any(c % b for c in terms.values()):
        raise IRError(f"dimension {a} is not divisible by {b}")
    return SymDim._make({m: c // b for m, c in terms.items()})


def dim_div_exact(a: Dim, b: Dim) -> Dim | None:
    """``a / b`` when ``b`` divides ``a`` as a monomial quotient, else None (used by reshape -1)."""
    if isinstance(b, int):
        try:
            return dim_floordiv(a, b)
        except IRError:
            return None
    bt = _as_terms(b)
    if len(bt) != 1:
        return 1 if a == b else None
    ((bm, bc),) = bt.items()
    out: dict[Monomial, int] = {}
    for m, c in _as_terms(a).items():
        if c == 0:  # a == 0: 0 / b == 0
            continue
        rest = list(m)
        for s in bm:
            if s not in rest:
                return None
            rest.remove(s)
        if c % bc:
            return None
        out[tuple(rest)] = c // bc
    return SymDim._make(out)


def sym(text: str | int) -> Dim:
    """Parse a dimension: ``"seq"``, ``"past + seq"``, ``"2*batch*seq - 1"``, ``"256"``."""
    if isinstance(text, int):
        return text
    s = text.replace(" ", "")
    if not s:
        raise IRError("empty dimension")
    s = s.replace("-", "+-")
    total: Dim = 0
    for term in s.split("+"):
        if term == "":
            continue
        sign = 1
        if term.startswith("-"):
            sign, term = -1, term[1:]
        val: Dim = sign
        for factor in term.split("*"):
            if factor.isdigit():
                val = dim_mul(val, int(factor))
            elif _NAME_RE.match(factor):
                val = dim_mul(val, SymDim((((factor,), 1),)))
            else:
                raise IRError(f"bad dimension expression {text!r}")
        total = dim_add(total, val)
    return total


def eval_dim(d: Dim, env: Mapping[str, int]) -> int:
    return d if isinstance(d, int) else d.evaluate(env)


def dim_str(d: Dim) -> str:
    return str(d)


def is_static(d: Dim) -> bool:
    return isinstance(d, int)


# ----------------------------------------------------------------------------------------------
# dtypes

DTYPES: dict[str, torch.dtype] = {
    "f64": torch.float64,
    "f32": torch.float32,
    "f16": torch.float16,
    "bf16": torch.bfloat16,
    "i64": torch.int64,
    "i32": torch.int32,
    "i16": torch.int16,
    "i8": torch.int8,
    "u8": torch.uint8,
    "bool": torch.bool,
}
TORCH_TO_DTYPE = {v: k for k, v in DTYPES.items()}
FLOAT_DTYPES = frozenset({"f64", "f32", "f16", "bf16"})
INT_DTYPES = frozenset({"i64", "i32", "i16", "i8", "u8"})
DTYPE_BYTES = {
    "f64": 8,
    "f32": 4,
    "f16": 2,
    "bf16": 2,
    "i64": 8,
    "i32": 4,
    "i16": 2,
    "i8": 1,
    "u8": 1,
    "bool": 1,
}


def to_torch_dtype(dtype: str) -> torch.dtype:
    try:
        return DTYPES[dtype]
    except KeyError:
        raise IRError(f"unknown dtype {dtype!r} (known: {', '.join(DTYPES)})") from None


def from_torch_dtype(dtype: torch.dtype) -> str:
    try:
        return TORCH_TO_DTYPE[dtype]
    except KeyError:
        raise IRError(f"torch dtype {dtype} has no llmc equivalent") from None


@dataclass(frozen=True)
class TensorType:
    """Shape (ints and symbolic dims) and dtype of an SSA value."""

    shape: tuple[Dim, ...]
    dtype: str

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise IRError(f"unknown dtype {self.dtype!r}")
        for d in self.shape:
            if not isinstance(d, SymDim) and (isinstance(d, bool) or not isinstance(d, int)):
                raise IRError(f"bad dimension {d!r} in shape")

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def is_float(self) -> bool:
        return self.dtype in FLOAT_DTYPES

    def with_shape(self, shape: Iterable[Dim]) -> TensorType:
        return TensorType(tuple(shape), self.dtype)

    def with_dtype(self, dtype: str) -> TensorType:
        return TensorType(self.shape, dtype)

    def numel(self) -> Dim:
        n: Dim = 1
        for d in self.shape:
            n = dim_mul(n, d)
        return n

    def concrete(self, env: Mapping[str, int]) -> tuple[int, ...]:
        return tuple(eval_dim(d, env) for d in self.shape)

    def symbols(self) -> frozenset[str]:
        out: set[str] = set()
        for d in self.shape:
            if isinstance(d, SymDim):
                out |= d.symbols
        return frozenset(out)

    def __str__(self) -> str:
        return f"{self.dtype}[{', '.join(str(d) for d in self.shape)}]"


def normalize_axis(axis: int, rank: int) -> int:
    if not -rank <= axis < max(rank, 1):
        raise IRError(f"axis {axis} out of range for rank {rank}")
    return axis % rank if rank else 0


def broadcast_shapes(a: tuple[Dim, ...], b: tuple[Dim, ...]) -> tuple[Dim, ...]:
    """Numpy broadcasting over symbolic dims: equal dims, or one side is 1."""
    out: list[Dim] = []
    for i in range(max(len(a), len(b))):
        da = a[len(a) - 1 - i] if i < len(a) else 1
        db = b[len(b) - 1 - i] if i < len(b) else 1
        if da == db or db == 1:
            out.append(da)
        elif da == 1:
            out.append(db)
        else:
            raise IRError(f"shapes {_fmt(a)} and {_fmt(b)} do not broadcast")
    return tuple(reversed(out))


def _fmt(shape: tuple[Dim, ...]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def promote_dtypes(a: str, b: str) -> str:
    if a == b:
        return a
    ta, tb = DTYPES[a], DTYPES[b]
    return TORCH_TO_DTYPE[torch.promote_types(ta, tb)]


def bind_symbols(values: Sequence[Any], types: Sequence[Any], env: dict[str, int]) -> None:
    """Bind symbolic dims of ``types`` from the concrete shapes of ``values`` (checks ranks,
    static dims and consistency; solves single-symbol linear dims such as ``past + seq``)."""
    pending: list[tuple[Any, int, str]] = []
    for v, t in zip(values, types, strict=True):
        if v.dim() != t.rank:
            raise IRError(f"input for {t} has rank {v.dim()} (shape {tuple(v.shape)})")
        for d, n in zip(t.shape, v.shape, strict=True):
            if isinstance(d, int):
                if d != n:
                    raise IRError(f"input for {t} has shape {tuple(v.shape)}")
            else:
                pending.append((d, int(n), str(t)))
    progress = True
    while pending and progress:  # each round solves at least one symbol or stops
        left = []
        for d, n, where in pending:
            unknown = d.symbols - env.keys()
            if not unknown:
                if d.evaluate(env) != n:
                    raise IRError(f"input for {where}: {d} = {d.evaluate(env)} but got {n}")
            elif len(unknown) == 1 and all(len(m) <= 1 for m, _ in d.terms):
                (s,) = unknown
                coef = dict(d.terms)[(s,)]
                rest = sum(c * (env[m[0]] if m else 1) for m, c in d.terms if m != (s,))
                if (n - rest) % coef or (n - rest) // coef < 0:
                    raise IRError(f"input for {where}: cannot solve {d} = {n}")
                env[s] = (n - rest) // coef
            else:
                left.append((d, n, where))
        progress = len(left) < len(pending)
        pending = left
    if pending:
        raise IRError(f"cannot bind symbolic dims {[str(d) for d, _, _ in pending]}")


def dim_substitute(d: Dim, mapping: Mapping[str, Dim]) -> Dim:
    """``d`` with each symbol in ``mapping`` replaced by its dimension (polynomial substitution)."""
    if not isinstance(d, SymDim) or not (d.symbols & set(mapping)):
        return d
    out: Dim = 0
    for mono, coef in d.terms:
        term: Dim = coef
        for s in mono:
            term = dim_mul(term, mapping[s] if s in mapping else SymDim((((s,), 1),)))
        out = dim_add(out, term)
    return out


def type_substitute(t: TensorType, mapping: Mapping[str, Dim]) -> TensorType:
    """``t`` with :func:`dim_substitute` applied to every dimension."""
    return t.with_shape(tuple(dim_substitute(d, mapping) for d in t.shape))
