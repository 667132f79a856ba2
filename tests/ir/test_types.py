"""Symbolic dimensions, tensor types, broadcasting and the interpreter's symbol binding."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from llmc.errors import IRError
from llmc.ir import SymDim, TensorType, sym
from llmc.ir.types import (
    bind_symbols,
    broadcast_shapes,
    dim_add,
    dim_div_exact,
    dim_floordiv,
    dim_mul,
    dim_sub,
    eval_dim,
    normalize_axis,
    promote_dtypes,
)
from tests.hypothesis_profiles import examples
from tests.ir.strategies import SYMBOLS, dims

_FAST = settings(max_examples=examples(3.75), deadline=None)
envs = st.fixed_dictionaries({s: st.integers(-5, 9) for s in SYMBOLS})

# ---------------------------------------------------------------------------------- algebra


def test_constants_collapse_to_int() -> None:
    seq = sym("seq")
    assert dim_sub(seq, seq) == 0 and isinstance(dim_sub(seq, seq), int)
    assert dim_add(sym("past + 1"), dim_sub(1, sym("past"))) == 2
    assert sym("256") == 256 and sym(7) == 7
    assert isinstance(seq, SymDim) and seq.symbols == {"seq"}


def test_canonical_form_is_structural() -> None:
    a, b = sym("a"), sym("b")
    square = dim_mul(dim_add(a, b), dim_add(a, b))
    assert square == sym("a*a + 2*a*b + b*b") == sym("b*b + 2*b*a + a*a")
    assert hash(square) == hash(sym("2*b*a + a*a + b*b"))
    assert dim_add(sym("seq"), sym("past")) == sym("past + seq")
    assert sym("seq") + 1 == 1 + sym("seq") == sym("seq + 1")
    assert sym("seq") * 2 == 2 * sym("seq") == sym("2*seq")


def test_printing() -> None:
    assert str(sym("seq + past")) == "past + seq"
    assert str(sym("2*batch*seq - 1")) == "2*batch*seq - 1"
    assert str(sym("seq*batch")) == "batch*seq"
    assert str(sym("1 + seq*seq")) == "seq*seq + 1"
    assert repr(sym("past + seq")) == "sym('past + seq')"


@_FAST
@given(dims(), dims(), dims())
def test_ring_laws(a, b, c) -> None:
    assert dim_add(a, b) == dim_add(b, a)
    assert dim_mul(a, b) == dim_mul(b, a)
    assert dim_add(dim_add(a, b), c) == dim_add(a, dim_add(b, c))
    assert dim_mul(dim_mul(a, b), c) == dim_mul(a, dim_mul(b, c))
    assert dim_mul(a, dim_add(b, c)) == dim_add(dim_mul(a, b), dim_mul(a, c))
    assert dim_sub(dim_add(a, b), b) == a
    assert dim_add(a, 0) == a and dim_mul(a, 1) == a and dim_mul(a, 0) == 0


@_FAST
@given(dims(), dims(), envs)
def test_evaluation_is_a_homomorphism(a, b, env) -> None:
    ev = lambda d: eval_dim(d, env)  # noqa: E731
    assert ev(dim_add(a, b)) == ev(a) + ev(b)
    assert ev(dim_sub(a, b)) == ev(a) - ev(b)
    assert ev(dim_mul(a, b)) == ev(a) * ev(b)


@_FAST
@given(dims(max_terms=4))
def test_sym_str_roundtrip(d) -> None:
    text = str(d)
    assert sym(text) == d
    assert str(sym(text)) == text


@pytest.mark.parametrize("bad", ["", "a/b", "2*", "1a", "seq^2", "(seq)", "a**2"])
def test_sym_rejects_bad_expressions(bad: str) -> None:
    with pytest.raises(IRError):
        sym(bad)


def test_evaluate_names_the_missing_symbol() -> None:
    with pytest.raises(IRError, match="'past' has no value"):
        sym("past + seq").evaluate({"seq": 3})
    assert sym("2*batch*seq - 1").evaluate({"batch": 2, "seq": 5}) == 19


# ---------------------------------------------------------------------------------- division


def test_dim_div_exact() -> None:
    bs = sym("batch*seq")
    assert dim_div_exact(bs, sym("batch")) == sym("seq")
    assert dim_div_exact(dim_mul(bs, 256), 256) == bs
    assert dim_div_exact(dim_mul(bs, 256), sym("4*seq")) == sym("64*batch")
    assert dim_div_exact(sym("2*past + 2*seq"), 2) == sym("past + seq")
    assert dim_div_exact(sym("past + seq"), sym("past + seq")) == 1
    assert dim_div_exact(sym("past + seq"), sym("seq")) is None
    assert dim_div_exact(sym("3*seq"), 2) is None
    assert dim_div_exact(sym("seq"), sym("2*seq")) is None
    assert dim_div_exact(12, 4) == 3 and dim_div_exact(12, 5) is None
    assert dim_div_exact(sym("seq"), 0) is None


@_FAST
@given(dims(), st.lists(st.sampled_from(SYMBOLS), max_size=2), st.integers(1, 4))
def test_div_exact_inverts_mul_by_a_monomial(a, mono, coef) -> None:
    m = coef
    for s in mono:
        m = dim_mul(m, sym(s))
    assert dim_div_exact(dim_mul(a, m), m) == a


def test_dim_floordiv() -> None:
    assert dim_floordiv(sym("4*seq + 8"), 4) == sym("seq + 2")
    with pytest.raises(IRError, match="not divisible by 3"):
        dim_floordiv(sym("4*seq"), 3)
    with pytest.raises(IRError):
        dim_floordiv(8, 0)


# ---------------------------------------------------------------------------------- types


def test_tensor_type_basics() -> None:
    t = TensorType((sym("batch"), sym("past + seq"), 4), "f16")
    assert str(t) == "f16[batch, past + seq, 4]"
    assert t.rank == 3 and t.is_float and t.symbols() == {"batch", "past", "seq"}
    assert t.numel() == sym("4*batch*past + 4*batch*seq")
    assert t.concrete({"batch": 2, "past": 1, "seq": 3}) == (2, 4, 4)
    assert t.with_dtype("i64").dtype == "i64" and t.with_shape((1,)).shape == (1,)
    assert TensorType((), "bool").numel() == 1


@pytest.mark.parametrize("bad", [(("x",), "f32"), ((2.0,), "f32"), ((True,), "f32"), ((2,), "f8")])
def test_tensor_type_rejects(bad) -> None:
    with pytest.raises(IRError):
        TensorType(*bad)


def test_normalize_axis() -> None:
    assert normalize_axis(-1, 3) == 2 and normalize_axis(1, 3) == 1 and normalize_axis(0, 0) == 0
    for bad in (3, -4):
        with pytest.raises(IRError, match="out of range"):
            normalize_axis(bad, 3)


def test_promote_dtypes_follows_torch() -> None:
    assert promote_dtypes("f16", "f32") == "f32"
    assert promote_dtypes("i64", "f16") == "f16"
    assert promote_dtypes("bf16", "f16") == "f32"
    assert promote_dtypes("i8", "u8") == "i16"
    assert promote_dtypes("bool", "i32") == "i32"


# ---------------------------------------------------------------------------------- broadcast


def test_broadcast_symbolic() -> None:
    b, s = sym("batch"), sym("seq")
    assert broadcast_shapes((b, s, 4), (4,)) == (b, s, 4)
    assert broadcast_shapes((b, 1, 4), (1, s, 1)) == (b, s, 4)
    assert broadcast_shapes((), (b,)) == (b,)
    assert broadcast_shapes((sym("past + seq"),), (sym("seq + past"),)) == (sym("past + seq"),)
    with pytest.raises(IRError, match="do not broadcast"):
        broadcast_shapes((b, s), (s, b))
    with pytest.raises(IRError, match=r"\[batch, 3\] and \[2\]"):
        broadcast_shapes((b, 3), (2,))


shapes = st.lists(st.integers(1, 3), max_size=4).map(tuple)


@_FAST
@given(shapes, shapes)
def test_broadcast_agrees_with_torch(a, b) -> None:
    try:
        want = tuple(torch.broadcast_shapes(a, b))
    except RuntimeError:
        with pytest.raises(IRError):
            broadcast_shapes(a, b)
        return
    assert broadcast_shapes(a, b) == want


# ---------------------------------------------------------------------------------- bind_symbols


def _bind(shapes: list[tuple[int, ...]], types: list[str]) -> dict[str, int]:
    from llmc.ir.parser import _Lexer, _parse_type

    ts = [_parse_type(_Lexer(t)) for t in types]
    env: dict[str, int] = {}
    bind_symbols([torch.empty(s) for s in shapes], ts, env)
    return env


def test_bind_solves_past_plus_seq() -> None:
    # the KV cache of past + seq positions comes first: seq is learnt later from the ids
    env = _bind([(2, 7, 4), (2, 3)], ["f32[batch, past + seq, 4]", "i64[batch, seq]"])
    assert env == {"batch": 2, "seq": 3, "past": 4}


def test_bind_solves_with_coefficients_and_chains() -> None:
    assert _bind([(9,), (4,)], ["f32[2*past + 1]", "f32[past]"]) == {"past": 4}
    assert _bind([(7,)], ["f32[2*seq + 1]"]) == {"seq": 3}
    env = _bind([(5,), (4,), (3,), (1,)], ["f32[a + b]", "f32[b + c]", "f32[c + d]", "f32[d]"])
    assert env == {"a": 3, "b": 2, "c": 2, "d": 1}
    assert _bind([(2, 3, 6)], ["f32[batch, seq, batch*seq]"]) == {"batch": 2, "seq": 3}


@pytest.mark.parametrize(
    ("shapes", "types", "match"),
    [
        ([(2, 3)], ["f32[batch]"], "rank 2"),
        ([(2, 5)], ["f32[batch, 4]"], "has shape"),
        ([(2,), (3,)], ["f32[seq]", "f32[seq]"], "seq = 2 but got 3"),
        ([(8,)], ["f32[2*seq + 1]"], "cannot solve"),
        ([(3,), (5,)], ["f32[past + seq]", "f32[seq]"], "cannot solve"),
        ([(6,)], ["f32[batch*seq]"], "cannot bind"),
        ([(6,)], ["f32[past + seq]"], "cannot bind"),
    ],
)
def test_bind_errors(shapes, types, match) -> None:
    with pytest.raises(IRError, match=match):
        _bind(shapes, types)


@settings(max_examples=examples(1.5), deadline=None)
@given(st.integers(1, 3), st.integers(0, 5), st.integers(1, 5), st.permutations(range(3)))
def test_bind_any_input_order(batch, past, seq, order) -> None:
    items = [
        ((batch, past + seq, 2), "f32[batch, past + seq, 2]"),
        ((batch, seq), "i64[batch, seq]"),
        ((batch, 2 * seq + past), "f32[batch, 2*seq + past]"),
    ]
    picked = [items[i] for i in order]
    env = _bind([s for s, _ in picked], [t for _, t in picked])
    assert env == {"batch": batch, "past": past, "seq": seq}
