"""Every registered op: its shape rule agrees with what its torch reference produces, and its cost
is sane.

``CASES`` maps each op name to an *input maker*: a function drawing random concrete operands and
attributes. ``test_every_op_has_a_case`` iterates :func:`llmc.ir.all_ops`, so registering an op
without adding a maker here fails the suite. A maker returns an :class:`OpCase`; operands that are
:class:`~llmc.ir.Param` become ``param`` nodes, tensors become graph inputs (with their dims made
symbolic in a second run unless ``symbolic=False``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmc.ir import (
    Graph,
    GraphBuilder,
    Param,
    QuantSpec,
    StorageFormat,
    TensorType,
    all_ops,
    verify,
)
from llmc.ir.graph import Value
from llmc.ir.registry import Cost
from llmc.ir.types import DTYPE_BYTES, bind_symbols, from_torch_dtype, sym
from llmc.runtime.interp import run
from tests.hypothesis_profiles import examples
from tests.ir.strategies import graphs_with_inputs

_SETTINGS = settings(
    max_examples=examples(0.3),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


@dataclass
class OpCase:
    inputs: list[Any]  # torch.Tensor (graph input) or Param (read by a param node)
    attrs: dict[str, Any] | Callable[[Graph, list[Value]], dict[str, Any]] | None = None
    # The shape rule must also hold with the inputs' dims symbolic: True (all dims > 1),
    # "leading" (all but the last, e.g. in-features tied to a static weight) or False.
    symbolic: bool | str = True
    extra_params: list[Param] = field(default_factory=list)


class Maker:
    """What an input maker draws from (wraps hypothesis' ``data``)."""

    def __init__(self, data: Any) -> None:
        self.data = data
        self.gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1)))

    def int(self, lo: int, hi: int) -> int:
        return self.data.draw(st.integers(lo, hi))

    def pick(self, xs: Any) -> Any:
        return self.data.draw(st.sampled_from(list(xs)))

    def flip(self) -> bool:
        return self.data.draw(st.booleans())

    def shape(self, lo: int = 0, hi: int = 4, size: int = 4) -> tuple[int, ...]:
        return tuple(self.int(1, size) for _ in range(self.int(lo, hi)))

    def tensor(self, shape: tuple[int, ...], dtype: str = "f32") -> torch.Tensor:
        if dtype in ("f64", "f32", "f16", "bf16"):
            return torch.randn(shape, generator=self.gen).to(_TORCH[dtype])
        if dtype == "bool":
            return torch.rand(shape, generator=self.gen) < 0.5
        return torch.randint(0, 5, shape, generator=self.gen).to(_TORCH[dtype])

    def broadcast_pair(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        a = self.shape(0, 4)
        b = list(a[self.int(0, len(a)) :]) if a else []
        b = [1 if self.flip() else d for d in b]
        if self.flip():
            a = tuple(1 if self.flip() else d for d in a)
        return (a, tuple(b)) if self.flip() else (tuple(b), a)


_TORCH = {
    "f64": torch.float64,
    "f32": torch.float32,
    "f16": torch.float16,
    "bf16": torch.bfloat16,
    "i64": torch.int64,
    "i32": torch.int32,
    "i8": torch.int8,
    "bool": torch.bool,
}

# ---------------------------------------------------------------------------------- makers


def _weight(m: Maker, out_f: int, in_f: int, name: str = "w") -> Param:
    if m.flip():
        return Param.dense(name, m.tensor((out_f, in_f)))
    group = m.pick([0, *(g for g in (1, 2, 4) if in_f % g == 0)])
    symmetric = m.flip()
    # int8 storage holds codes in [-128, 127]: asymmetric codes [0, 2**bits) need bits < 8
    q = QuantSpec(m.pick((4, 8)) if symmetric else m.pick((2, 4)), group, symmetric)
    groups = 1 if group == 0 else in_f // group
    data = {
        "qvalue": torch.randint(q.qmin, q.qmax + 1, (out_f, in_f), generator=m.gen).to(torch.int8),
        "scale": torch.rand(out_f, groups, generator=m.gen) + 0.1,
    }
    if not q.symmetric:
        data["zero"] = torch.randint(0, 4, (out_f, groups), generator=m.gen).to(torch.int8)
    return Param(name, TensorType((out_f, in_f), "f32"), StorageFormat(q), data)


def unary_case(op: str) -> Callable[[Maker], OpCase]:
    def make(m: Maker) -> OpCase:
        dtypes = ["f32", "f64", "bf16"] + (["i64", "i32"] if op in ("neg", "abs", "relu") else [])
        x = m.tensor(m.shape(), m.pick(dtypes))
        attrs = {"approximate": m.pick(("none", "tanh"))} if op == "gelu" else None
        return OpCase([x], attrs)

    return make


def binary_case(op: str) -> Callable[[Maker], OpCase]:
    def make(m: Maker) -> OpCase:
        sa, sb = m.broadcast_pair()
        da, db = m.pick(
            [
                ("f32", "f32"),
                ("f32", "f16"),
                ("f64", "f32"),
                ("i64", "i64"),
                ("i32", "f32"),
                ("i64", "i32"),
            ]
        )
        a, b = m.tensor(sa, da), m.tensor(sb, db)
        if op == "pow" and db.startswith("i"):
            b = b.abs()
        return OpCase([a, b])

    return make


def where_case(m: Maker) -> OpCase:
    sa, sb = m.broadcast_pair()
    sc = sa if m.flip() else sb
    dt = m.pick(("f32", "i64"))
    return OpCase([m.tensor(sc, "bool"), m.tensor(sa, dt), m.tensor(sb, dt)])


def constant_case(m: Maker) -> OpCase:
    dtype = m.pick(("f32", "f16", "i64", "bool"))
    return OpCase(
        [],
        {
            "value": m.pick((0.0, 1.0, -2.5, float("inf"))) if dtype[0] == "f" else 1.0,
            "dtype": dtype,
        },
    )


def param_case(m: Maker) -> OpCase:
    p = Param.dense("table.weight", m.tensor(m.shape(0, 3)))
    return OpCase([], {"name": p.name}, extra_params=[p])


def cast_case(m: Maker) -> OpCase:
    src, dst = m.pick(_TORCH), m.pick(_TORCH)
    return OpCase([m.tensor(m.shape(), src)], {"dtype": dst})


def linear_case(m: Maker) -> OpCase:
    in_f, out_f = m.int(1, 6), m.int(1, 6)
    x = m.tensor((*m.shape(0, 2), in_f))
    ins: list[Any] = [x, _weight(m, out_f, in_f)]
    if m.flip():
        ins.append(m.tensor((out_f,)))
    return OpCase(ins, symbolic="leading")


def matmul_case(m: Maker) -> OpCase:
    sa, sb = m.broadcast_pair()
    k = m.int(1, 4)
    a = m.tensor((*sa, m.int(1, 4), k))
    b = m.tensor((*sb, k, m.int(1, 4)))
    return OpCase([a, b])


def norm_case(op: str) -> Callable[[Maker], OpCase]:
    def make(m: Maker) -> OpCase:
        x = m.tensor(m.shape(1, 4), m.pick(("f32", "f16", "bf16")))
        n = m.int(0, 1 if op == "rms_norm" else 2)
        ins = [x] + [m.tensor((x.shape[-1],)) for _ in range(n)]
        return OpCase(ins, {"eps": m.pick((1e-6, 1e-5))})

    return make


def softmax_case(m: Maker) -> OpCase:
    x = m.tensor(m.shape(1, 4), m.pick(("f32", "f16")))
    return OpCase([x], {"dim": m.int(-x.dim(), x.dim() - 1)})


def embedding_case(m: Maker) -> OpCase:
    ids = torch.randint(0, 6, m.shape(0, 3), generator=m.gen).to(m.pick((torch.int64, torch.int32)))
    table = m.tensor((6, m.int(1, 4)))
    return OpCase([ids, Param.dense("embed", table) if m.flip() else table])


def rope_case(m: Maker) -> OpCase:
    b, h, s, d = m.int(1, 2), m.int(1, 3), m.int(1, 4), 2 * m.int(1, 3)
    attrs = {
        "theta": m.pick((10000.0, 1e6)),
        "rotary_dim": m.pick([0, *range(2, d + 1, 2)]),
        "interleaved": m.flip(),
        "scaling": m.pick(("", "linear", "llama3")),
        "factor": 4.0,
        "mscale": m.pick((1.0, 1.2)),
    }
    pos = torch.randint(0, 100, (b, s), generator=m.gen)
    return OpCase([m.tensor((b, h, s, d)), pos], attrs)


def attention_case(m: Maker) -> OpCase:
    b, kvh, s, d = m.int(1, 2), m.int(1, 2), m.int(1, 4), m.int(1, 4)
    h, t = kvh * m.int(1, 3), s + m.int(0, 3)
    dv = d if m.flip() else m.int(1, 4)
    attrs = {"causal": m.flip(), "window": m.int(0, 3), "scale": m.pick((0.0, 0.3))}
    q, k, v = m.tensor((b, h, s, d)), m.tensor((b, kvh, t, d)), m.tensor((b, kvh, t, dv))
    return OpCase([q, k, v], attrs)


def attention_softcap_case(m: Maker) -> OpCase:
    case = attention_case(m)
    assert isinstance(case.attrs, dict)
    return OpCase(case.inputs, {**case.attrs, "softcap": m.pick((0.0, 0.5, 30.0))})


def moe_case(m: Maker) -> OpCase:
    e, h, i = m.int(1, 4), m.int(1, 4), m.int(1, 3)
    x = m.tensor((*m.shape(0, 2), h))
    ws = [m.tensor((e, h)), m.tensor((e, 2 * i, h)), m.tensor((e, h, i))]
    attrs = {"top_k": m.int(1, e), "normalize": m.flip(), "activation": m.pick(("silu", "relu"))}
    return OpCase([x, *ws], attrs)


def attention_async_case(m: Maker) -> OpCase:
    case = attention_case(m)
    assert isinstance(case.attrs, dict)
    # a safe range that may or may not hold the logits: both the async path and the fallback
    lo = m.pick((-60.0, -2.0))
    attrs = {**case.attrs, "phi": m.pick((0.0, 1.5)), "lo": lo, "hi": -lo, "chunk": m.int(1, 4)}
    return OpCase(case.inputs, attrs)


def reshape_case(m: Maker) -> OpCase:
    x = m.tensor(m.shape(0, 4))
    n = x.numel()
    divisors = [k for k in range(1, n + 1) if n % k == 0]
    a = m.pick(divisors)
    shape: list[int] = m.pick(([n], [a, n // a], [n // a, 1, a], [1] * m.int(0, 2) + [n]))
    if shape and m.flip():
        shape[m.int(0, len(shape) - 1)] = -1
    return OpCase([x], {"shape": tuple(shape)}, symbolic=False)


def permute_case(m: Maker) -> OpCase:
    x = m.tensor(m.shape(0, 4))
    return OpCase([x], {"perm": tuple(m.data.draw(st.permutations(range(x.dim()))))})


def concat_case(m: Maker) -> OpCase:
    base = m.shape(1, 4)
    ax = m.int(0, len(base) - 1)
    xs = []
    for _ in range(m.int(1, 3)):
        shape = list(base)
        shape[ax] = m.int(0, 3)
        xs.append(m.tensor(tuple(shape)))
    return OpCase(xs, {"dim": ax if m.flip() else ax - len(base)})


def slice_case(m: Maker) -> OpCase:
    x = m.tensor(m.shape(1, 3, size=6))
    ax = m.int(0, x.dim() - 1)
    n = x.shape[ax]
    if m.flip():
        attrs: dict[str, Any] = {"dim": ax, "start": -m.int(1, n + 2)}
    else:
        start = m.int(0, n)
        attrs = {
            "dim": ax,
            "start": start,
            "end": m.pick((None, m.int(start, n + 3))),
            "step": m.int(1, 3),
        }
    if m.flip():
        attrs["dim"] = ax - x.dim()
    return OpCase([x], attrs, symbolic=False)


def index_select_case(m: Maker) -> OpCase:
    x = m.tensor(m.shape(1, 3))
    ax = m.int(-x.dim(), x.dim() - 1)
    idx = torch.randint(0, x.shape[ax], (m.int(0, 4),), generator=m.gen)
    return OpCase([x, idx], {"dim": ax})


def gather_rows_case(m: Maker) -> OpCase:
    x = m.tensor(m.shape(2, 4))
    ax = m.int(1, x.dim() - 1)
    lead, rows = x.shape[:ax], x.shape[ax]
    n = m.int(0, rows)  # every leading index keeps n rows, at random places
    keep = torch.zeros(math.prod(lead), rows, dtype=torch.bool)
    for r in keep:
        r[torch.randperm(rows, generator=m.gen)[:n]] = True
    attrs = {"length": "kept", "dim": ax - x.dim() if m.flip() else ax}
    return OpCase([x, keep.reshape(*lead, rows)], attrs)


def token_scores_case(m: Maker) -> OpCase:
    b, rows, d = m.int(1, 2), m.int(1, 6), 8
    kvh = m.int(1, 2)
    h = kvh * m.int(1, 2)
    past = m.int(0, 3)
    q = m.tensor((b, h, rows, d))
    k = m.tensor((b, kvh, past + rows, d))
    pos = torch.arange(past, past + rows).expand(b, rows).contiguous()
    method = ["attention", "pagerank", "random"][m.int(0, 2)]
    return OpCase([q, k, pos], {"method": method, "window": m.int(0, 3), "seed": m.int(0, 2)})


def keep_rows_case(m: Maker) -> OpCase:
    b, rows = m.int(1, 2), m.int(1, 8)
    scores = m.tensor((b, rows)).to(torch.float32)
    pos = torch.arange(rows).expand(b, rows).contiguous()
    method = ["topk", "uniform", "threshold"][m.int(0, 2)]
    attrs = {"keep": 0.25 * m.int(1, 4), "recent": m.int(1, 2), "method": method}
    return OpCase([scores, pos], attrs)


def reduce_case(m: Maker) -> OpCase:
    x = m.tensor(m.shape(1, 4))
    dims = m.data.draw(st.sets(st.integers(0, x.dim() - 1), min_size=1))
    dims = tuple(d - x.dim() if m.flip() else d for d in sorted(dims))
    return OpCase([x], {"dims": dims, "keepdim": m.flip()})


def cumsum_case(m: Maker) -> OpCase:
    x = m.tensor(m.shape(1, 4))
    return OpCase([x], {"dim": m.data.draw(st.integers(-x.dim(), x.dim() - 1))})


def _region(parent: Graph, types: list[TensorType], body: Callable[..., Value]) -> Graph:
    r = Graph("region")
    r.parent = parent
    args = []
    for t in types:
        v = Value(parent.fresh_name("arg"), t)
        r.inputs.append(v)
        args.append(v)
    rb = GraphBuilder(graph=r)
    rb.output(body(rb, *args))
    return r


def cond_case(m: Maker) -> OpCase:
    x = m.tensor(m.shape(0, 3))
    pred = torch.tensor(m.flip())

    def attrs(g: Graph, ins: list[Value]) -> dict[str, Any]:
        t = [v.type for v in ins[1:]]
        return {
            "then_branch": _region(g, t, lambda rb, a: rb.emit("neg", a)),
            "else_branch": _region(g, t, lambda rb, a: rb.emit("relu", a)),
        }

    return OpCase([pred, x], attrs)


def qlinear_a8_case(m: Maker) -> OpCase:
    in_f, out_f = m.int(1, 6), m.int(1, 6)
    q = QuantSpec(8, 0, True)
    data = {
        "qvalue": torch.randint(-127, 128, (out_f, in_f), generator=m.gen).to(torch.int8),
        "scale": torch.rand(out_f, 1, generator=m.gen) + 0.1,
    }
    w = Param("w8", TensorType((out_f, in_f), "f32"), StorageFormat(q), data)
    ins: list[Any] = [m.tensor((*m.shape(0, 2), in_f)), w]
    if m.flip():
        ins.append(m.tensor((out_f,)))
    return OpCase(ins, {"weight": "w8", "act_scale": m.pick((0.0, 0.05))}, symbolic="leading")


def fused_elementwise_case(m: Maker) -> OpCase:
    shape = m.shape(0, 3)
    xs = [m.tensor(shape) for _ in range(m.int(1, 2))]

    def attrs(g: Graph, ins: list[Value]) -> dict[str, Any]:
        def body(rb: GraphBuilder, *args: Value) -> Value:
            y = rb.emit("silu", args[0])
            return rb.emit("mul", y, args[-1])

        return {"body": _region(g, [v.type for v in ins], body)}

    return OpCase(xs, attrs)


CASES: dict[str, Callable[[Maker], OpCase]] = {
    "param": param_case,
    "constant": constant_case,
    **{
        op: unary_case(op)
        for op in ("neg", "abs", "exp", "log", "sqrt", "rsqrt", "relu", "sigmoid", "tanh", "silu")
        + ("sin", "cos", "gelu")
    },
    "cast": cast_case,
    **{
        op: binary_case(op)
        for op in (
            "add",
            "sub",
            "mul",
            "div",
            "pow",
            "maximum",
            "minimum",
            "lt",
            "gt",
            "le",
            "ge",
            "eq",
            "ne",
        )
    },
    "where": where_case,
    "linear": linear_case,
    "matmul": matmul_case,
    "rms_norm": norm_case("rms_norm"),
    "layer_norm": norm_case("layer_norm"),
    "softmax": softmax_case,
    "embedding": embedding_case,
    "rope": rope_case,
    "attention": attention_softcap_case,
    "reshape": reshape_case,
    "permute": permute_case,
    "concat": concat_case,
    "slice": slice_case,
    "index_select": index_select_case,
    "gather_rows": gather_rows_case,
    "token_scores": token_scores_case,
    "keep_rows": keep_rows_case,
    "reduce_sum": reduce_case,
    "reduce_mean": reduce_case,
    "reduce_max": reduce_case,
    "cumsum": cumsum_case,
    "cond": cond_case,
    # ops_quant.py
    "qlinear_a8": qlinear_a8_case,
    "fused_elementwise": fused_elementwise_case,
    # ops_attention.py
    "attention_async": attention_async_case,
    # ops_moe.py
    "moe": moe_case,
}

# ---------------------------------------------------------------------------------- runner


def _symbolic_type(t: torch.Tensor, mode: bool | str) -> TensorType:
    """Dims of size > 1 become symbols named by their size (equal sizes share a symbol); with
    mode "leading" the last dim stays static."""
    keep = t.dim() - 1 if mode == "leading" else t.dim()
    shape = tuple(d if d <= 1 or i >= keep else sym(f"n{d}") for i, d in enumerate(t.shape))
    return TensorType(shape, from_torch_dtype(t.dtype))


def build(op: str, case: OpCase, symbolic: bool | str) -> tuple[Graph, dict[str, torch.Tensor]]:
    b = GraphBuilder(f"case_{op}")
    for p in case.extra_params:
        b.graph.add_param(p)
    vals: list[Value] = []
    feeds: dict[str, torch.Tensor] = {}
    for i, x in enumerate(case.inputs):
        if isinstance(x, Param):
            vals.append(b.param(x.name, x))
        else:
            t = (
                _symbolic_type(x, symbolic)
                if symbolic
                else TensorType(tuple(x.shape), from_torch_dtype(x.dtype))
            )
            vals.append(b.input(f"in{i}", t))
            feeds[f"in{i}"] = x
    attrs = case.attrs(b.graph, vals) if callable(case.attrs) else case.attrs
    b.output(b.emit(op, *vals, attrs=attrs))
    g = b.finish()
    verify(g)
    return g, feeds


def check_case(op: str, case: OpCase, symbolic: bool | str) -> None:
    g, feeds = build(op, case, symbolic)
    out = g.outputs[0]
    from llmc.runtime.interp import Interpreter

    interp = Interpreter(g)
    (res,) = interp.run(feeds)  # binds the inputs' symbols and any an op makes at run time
    env = dict(interp.env)
    want = out.type.concrete(env)
    assert tuple(res.shape) == want, (
        f"{op}: shape rule says {out.type} = {want}, reference gave {tuple(res.shape)}"
    )
    got_dtype = from_torch_dtype(res.dtype)
    assert got_dtype == out.type.dtype, (
        f"{op}: shape rule says {out.type}, reference gave {got_dtype}"
    )
    # cost over concrete types: non-negative, writes the result once
    ins = [TensorType(v.type.concrete(env), v.type.dtype) for v in g.nodes[-1].inputs]
    ot = TensorType(want, out.type.dtype)
    cost = all_ops()[op].cost(ins, ot, g.nodes[-1].attrs, [_nbytes(t) for t in ins])
    assert isinstance(cost, Cost)
    assert cost.flops >= 0 and cost.bytes_read >= 0 and cost.bytes_written >= 0
    assert all(math.isfinite(x) for x in (cost.flops, cost.bytes_read, cost.bytes_written))


def _nbytes(t: TensorType) -> float:
    return float(math.prod(int(d) for d in t.shape) * DTYPE_BYTES[t.dtype])


# ---------------------------------------------------------------------------------- tests


def test_every_op_has_a_case() -> None:
    missing = sorted(set(all_ops()) - set(CASES))
    assert not missing, (
        f"ops without an input maker: {missing}; add one to CASES in tests/ir/test_ops.py "
        "(it draws random operands so the shape rule is checked against the reference)"
    )


@pytest.mark.parametrize("op", sorted(CASES))
@_SETTINGS
@given(data=st.data())
def test_shape_rule_matches_reference(op: str, data: Any) -> None:
    if op not in all_ops():
        pytest.skip(f"op {op} is not registered in this checkout")
    case = CASES[op](Maker(data))
    check_case(op, case, symbolic=False)
    if case.symbolic and any(isinstance(x, torch.Tensor) and x.dim() for x in case.inputs):
        check_case(op, case, symbolic=case.symbolic)


@settings(max_examples=examples(), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(graphs_with_inputs())
def test_every_node_of_random_graphs_matches_its_type(case) -> None:
    """Run random graphs with a hook that checks each result (regions included) against the
    node's recorded type under the symbols bound from the inputs."""
    g, inputs = case
    env: dict[str, int] = {}
    bind_symbols([inputs[v.name] for v in g.inputs], [v.type for v in g.inputs], env)
    seen = []

    def hook(node, res):
        assert tuple(res.shape) == node.type.concrete(env), (node, tuple(res.shape))
        assert from_torch_dtype(res.dtype) == node.type.dtype, node
        seen.append(node)

    run(g, inputs, hooks=[hook])
    assert seen


# ---------------------------------------------------------------------------------- costs


def _cost(op: str, ins: list[TensorType], attrs: Any = None) -> Cost:
    od = all_ops()[op]
    attrs = od.coerce_attrs(attrs)
    out = od.infer(ins, attrs, None)
    return od.cost(ins, out, attrs, [_nbytes(t) for t in ins])


def test_linear_flops() -> None:
    x, w, b = TensorType((2, 3, 5), "f32"), TensorType((7, 5), "f32"), TensorType((7,), "f32")
    assert _cost("linear", [x, w]).flops == 2 * (2 * 3) * 7 * 5
    assert _cost("linear", [x, w, b]).flops == 2 * (2 * 3) * 7 * 5 + (2 * 3) * 7
    c = _cost("linear", [x, w])
    assert c.bytes_read == _nbytes(x) + _nbytes(w) and c.bytes_written == 2 * 3 * 7 * 4


def test_matmul_flops() -> None:
    a, b = TensorType((4, 1, 3, 5), "f32"), TensorType((2, 5, 6), "f32")
    assert _cost("matmul", [a, b]).flops == 2 * (4 * 2) * 3 * 6 * 5


@pytest.mark.parametrize("causal", [True, False])
def test_attention_flops(causal: bool) -> None:
    b, h, kvh, s, t, d = 2, 8, 2, 3, 11, 16
    q = TensorType((b, h, s, d), "f16")
    kv = TensorType((b, kvh, t, d), "f16")
    c = _cost("attention", [q, kv, kv], {"causal": causal})
    # QK^T and PV: 2 * b*h*s*t*d each; softmax: 5 per score (max, sub, exp, sum, div)
    assert c.flops == 2 * 2 * b * h * s * t * d + 5 * b * h * s * t
    assert c.bytes_written == b * h * s * d * 2
    # a value head dim other than the query's: p @ v costs 2 * b*h*s*t*dv
    v = TensorType((b, kvh, t, 4), "f16")
    c = _cost("attention", [q, kv, v], {"causal": causal})
    assert c.flops == 2 * b * h * s * t * d + 2 * b * h * s * t * 4 + 5 * b * h * s * t


def test_views_and_leaves_are_free() -> None:
    x = TensorType((4, 6), "f32")
    assert _cost("reshape", [x], {"shape": (24,)}) == Cost()
    assert _cost("cond", [TensorType((), "bool")], _cond_attrs()) == Cost()


def _cond_attrs() -> dict[str, Any]:
    g = Graph()
    return {
        "then_branch": _region(g, [], lambda rb: rb.emit("constant", value=1.0)),
        "else_branch": _region(g, [], lambda rb: rb.emit("constant", value=2.0)),
    }


# ---------------------------------------------------------------------------------- rejections


@pytest.mark.parametrize(
    ("op", "shape", "attrs", "match"),
    [
        ("reduce_sum", (2, 3), {"dims": ()}, "non-empty"),
        ("reduce_max", (2, 3), {"dims": (1, -1)}, "distinct"),
        ("softmax", (2, 3), {"dim": 2}, "out of range"),
        ("permute", (2, 3), {"perm": (0, 0)}, "not a permutation"),
        ("reshape", (2, 3), {"shape": (4, -1)}, "cannot infer -1"),
        ("reshape", (2, 3), {"shape": (-1, -1)}, "at most one -1"),
        ("slice", (2, 3), {"dim": 1, "start": -1, "end": 2}, "negative start needs end=None"),
        ("slice", (2, 3), {"dim": 1, "start": 2, "end": 1}, "negative range"),
        ("slice", (2, 3), {"dim": 1, "step": 0}, "step must be >= 1"),
        ("concat", (2, 3), {"dim": 2}, "out of range"),
        ("exp", (2, 3), None, None),  # valid: shows the helper builds
    ],
)
def test_shape_rules_reject(op: str, shape, attrs, match) -> None:
    from llmc.errors import IRError

    b = GraphBuilder("r")
    x = b.input("x", TensorType(shape, "f32"))
    if match is None:
        b.emit(op, x, attrs=attrs)
        return
    with pytest.raises(IRError, match=match):
        b.emit(op, x, attrs=attrs)


def test_slice_clamps_like_torch() -> None:
    b = GraphBuilder("c")
    x = b.input("x", TensorType((4,), "f32"))
    assert b.emit("slice", x, dim=0, start=1, end=10).type.shape == (3,)
    assert b.emit("slice", x, dim=0, start=-9).type.shape == (4,)
    assert b.emit("slice", x, dim=0, start=0, end=10, step=3).type.shape == (2,)
