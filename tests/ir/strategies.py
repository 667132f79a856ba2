"""Hypothesis strategies for random, small, *valid* llmc IR graphs.

Stable API (other suites import it: ``from tests.ir.strategies import graphs``; run pytest as
``.venv/bin/python -m pytest`` so the repository root is importable). Additions are fine; do not
rename or change the meaning of what is here.

``graphs(*, features=FEATURES, max_steps=6, symbolic=None) -> SearchStrategy[Graph]``
    A graph that passes :func:`llmc.ir.verify` (the strategy asserts it). ``features`` picks the
    constructs that may appear (a subset of :data:`FEATURES`); ``max_steps`` bounds the number of
    construction steps (one step adds 1 to ~15 nodes); ``symbolic`` True makes ``batch``, ``seq``
    and ``past`` symbolic, False makes every dim static, None lets hypothesis choose per symbol.
    Every param carries real data (dense, quantized or sparse, satisfying its storage format), so
    every graph runs in the interpreter. Values stay finite: domain-restricted ops get guarded
    operands (``log(abs(x) + 1)``) and products are bounded.

``graphs_with_inputs(**same_options) -> SearchStrategy[tuple[Graph, dict[str, Tensor]]]``
    A graph as above and concrete inputs for it, by input name: symbols are bound to small sizes
    (``batch`` 1..2, ``seq`` 1..4, ``past`` 0..3) and the tensors come from
    :func:`concrete_inputs`. For differential tests::

        @given(graphs_with_inputs())
        def test_my_pass_is_exact(case):
            g, inputs = case
            want = run(g, inputs)
            g2 = g.copy()                 # structural copy, param tensors shared
            my_pass(g2)                   # whatever your pass does, in place
            got = run(g2, inputs)
            for a, b in zip(want, got):
                torch.testing.assert_close(a, b)

``concrete_inputs(graph, env, seed=0) -> dict[str, Tensor]``
    Inputs for *any* graph given its symbols' values: floats ~ N(0, 1), integers uniform in
    ``[0, INT_HIGH)`` (valid token ids and positions: embedding tables here have ``INT_HIGH``
    rows), bools fair coins.

``dims(symbols=SYMBOLS, max_terms=3) -> SearchStrategy[Dim]``
    A dimension: an int or a :class:`~llmc.ir.types.SymDim` polynomial over ``symbols``.

``FEATURES``: ``unary``, ``binary`` (broadcasting, comparisons, ``where``), ``linear``,
``quant`` (int2..int8 weights, per-channel or grouped, symmetric or not), ``sparse`` (N:M and
unstructured weights), ``layout`` (reshape, permute, slice, concat, index_select, cast),
``norm`` (softmax, rms_norm, layer_norm), ``reduce``, ``matmul``, ``attention`` (GQA, causal or
not, sliding window, KV-cache concat on ``past``), ``rope``, ``embedding``, ``cond`` (regions,
possibly nested).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from hypothesis import strategies as st

from llmc.ir import Graph, GraphBuilder, Param, QuantSpec, SparsitySpec, StorageFormat, verify
from llmc.ir.graph import Value
from llmc.ir.types import Dim, SymDim, TensorType, dim_add, dim_mul, sym, to_torch_dtype

__all__ = [
    "FEATURES",
    "INT_HIGH",
    "SYMBOLS",
    "concrete_inputs",
    "dims",
    "graphs",
    "graphs_with_inputs",
]

FEATURES = frozenset(
    {
        "unary",
        "binary",
        "linear",
        "quant",
        "sparse",
        "layout",
        "norm",
        "reduce",
        "matmul",
        "attention",
        "rope",
        "embedding",
        "cond",
    }
)
SYMBOLS = ("batch", "seq", "past")
INT_HIGH = 8
SIZES = {"batch": (1, 2), "seq": (1, 4), "past": (0, 3)}  # inclusive ranges for concrete values

_TOTAL_UNARY = ("neg", "abs", "relu", "sigmoid", "tanh", "silu", "sin", "cos", "gelu")
_GUARDED_UNARY = ("exp", "log", "sqrt", "rsqrt")
_MAG_LIMIT = 1e4  # above this estimated magnitude a value is squashed before multiplying


# ---------------------------------------------------------------------------------------- dims


def dims(symbols: Iterable[str] = SYMBOLS, max_terms: int = 3) -> st.SearchStrategy[Dim]:
    """An int or a polynomial over ``symbols`` with small integer coefficients."""
    names = tuple(symbols)
    mono = st.lists(st.sampled_from(names), min_size=0, max_size=2).map(lambda m: tuple(sorted(m)))
    term = st.tuples(mono, st.integers(-3, 3).filter(bool))

    def build(terms: list[tuple[tuple[str, ...], int]]) -> Dim:
        d: Dim = 0
        for m, c in terms:
            t: Dim = c
            for s in m:
                t = dim_mul(t, sym(s))
            d = dim_add(d, t)
        return d

    return st.lists(term, min_size=0, max_size=max_terms).map(build)


# ---------------------------------------------------------------------------------------- inputs


def concrete_inputs(graph: Graph, env: Mapping[str, int], seed: int = 0) -> dict[str, torch.Tensor]:
    """Concrete tensors for every graph input (see the module docstring)."""
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for v in graph.inputs:
        shape = v.type.concrete(env)
        dt = to_torch_dtype(v.type.dtype)
        if v.type.is_float:
            out[v.name] = torch.randn(shape, generator=gen).to(dt)
        elif v.type.dtype == "bool":
            out[v.name] = torch.rand(shape, generator=gen) < 0.5
        else:
            out[v.name] = torch.randint(0, INT_HIGH, shape, generator=gen).to(dt)
    return out


def _graph_symbols(g: Graph) -> set[str]:
    out: set[str] = set()
    for v in g.inputs:
        out |= v.type.symbols()
    return out


# ---------------------------------------------------------------------------------------- graphs


def graphs(
    *,
    features: Iterable[str] = FEATURES,
    max_steps: int = 6,
    symbolic: bool | None = None,
) -> st.SearchStrategy[Graph]:
    """Random valid graphs (see the module docstring)."""
    feats = frozenset(features)
    unknown = feats - FEATURES
    if unknown:
        raise ValueError(f"unknown features {sorted(unknown)} (known: {sorted(FEATURES)})")
    return _graph_and_sizes(feats, max_steps, symbolic).map(lambda gs: gs[0])


def graphs_with_inputs(
    *,
    features: Iterable[str] = FEATURES,
    max_steps: int = 6,
    symbolic: bool | None = None,
) -> st.SearchStrategy[tuple[Graph, dict[str, torch.Tensor]]]:
    """Random valid graphs with concrete inputs (see the module docstring)."""
    feats = frozenset(features)
    unknown = feats - FEATURES
    if unknown:
        raise ValueError(f"unknown features {sorted(unknown)} (known: {sorted(FEATURES)})")

    @st.composite
    def build(draw: Any) -> tuple[Graph, dict[str, torch.Tensor]]:
        g, sizes = draw(_graph_and_sizes(feats, max_steps, symbolic))
        env = {s: sizes[s] for s in _graph_symbols(g)}
        seed = draw(st.integers(0, 2**31 - 1))
        return g, concrete_inputs(g, env, seed)

    return build()


def _graph_and_sizes(
    feats: frozenset[str], max_steps: int, symbolic: bool | None
) -> st.SearchStrategy[tuple[Graph, dict[str, int]]]:
    @st.composite
    def build(draw: Any) -> tuple[Graph, dict[str, int]]:
        sizes = {s: draw(st.integers(lo, hi), label=s) for s, (lo, hi) in SIZES.items()}
        dims_: dict[str, Dim] = {}
        for s in SYMBOLS:
            is_sym = draw(st.booleans()) if symbolic is None else symbolic
            dims_[s] = sym(s) if is_sym else sizes[s]
        seed = draw(st.integers(0, 2**31 - 1), label="data seed")
        gen = _Gen(draw, feats, dims_, torch.Generator().manual_seed(seed))
        g = gen.build(max_steps)
        verify(g, "tests/ir/strategies.py generated an invalid graph")
        return g, sizes

    return build()


class _Gen:
    """Grows one graph: a pool of float values, each step applies one feature to one of them."""

    def __init__(
        self, draw: Any, feats: frozenset[str], dims_: dict[str, Dim], gen: torch.Generator
    ) -> None:
        self.draw = draw
        self.feats = feats
        self.B, self.S, self.P = dims_["batch"], dims_["seq"], dims_["past"]
        self.gen = gen
        self.g = Graph(draw(st.sampled_from(["main", "tiny", "block"]), label="graph name"))
        self.pool: list[Value] = []
        self.mag: dict[int, float] = {}  # id(value) -> rough bound of |value|
        self.counter = 0
        self.pos: Value | None = None
        self.pred: Value | None = None

    # -- helpers -------------------------------------------------------------------------------
    def pick(self, options: Any, label: str = "") -> Any:
        return self.draw(st.sampled_from(list(options)), label=label or None)

    def flip(self, label: str = "") -> bool:
        return self.draw(st.booleans(), label=label or None)

    def uid(self) -> int:
        self.counter += 1
        return self.counter

    def add(self, v: Value, mag: float) -> Value:
        self.pool.append(v)
        self.mag[id(v)] = mag
        return v

    def m(self, v: Value) -> float:
        return self.mag.get(id(v), 1.0)

    def rand(self, *shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=self.gen)

    def name_hint(self, hint: str) -> str:
        return hint if self.flip("named") else ""

    # -- top level -----------------------------------------------------------------------------
    def build(self, max_steps: int) -> Graph:
        b = GraphBuilder(graph=self.g)
        hidden = self.pick((4, 8, 16), "hidden")
        if self.draw(st.booleans(), label="meta"):
            self.g.meta = {"family": "test", "hidden": hidden}
        if "embedding" in self.feats and self.flip("embedding start"):
            ids = b.input("ids", TensorType((self.B, self.S), "i64"))
            table = self.dense_param("embed_tokens.weight", self.rand(INT_HIGH, hidden))
            with b.scope("model.embed_tokens", block="embed"):
                x = b.emit("embedding", ids, b.param(table.name, table), name="h")
        else:
            x = b.input("x", TensorType((self.B, self.S, hidden), "f32"))
        self.add(x, 3.0)
        steps = self.draw(st.integers(1, max(1, max_steps)), label="steps")
        for layer in range(steps):
            self.step(b, layer, depth=0)
        outs = [self.pool[-1]]
        if len(self.pool) > 1 and self.flip("second output"):
            other = self.pick(self.pool[:-1], "second output value")
            if other is not outs[0]:
                outs.append(other)
        b.output(*outs)
        return self.g

    def step(self, b: GraphBuilder, layer: int, depth: int) -> None:
        options = [f for f in sorted(self.feats) if f in _STEPS and self.applicable(f)]
        if depth > 0:
            options = [f for f in options if f in ("unary", "binary", "linear", "cond")]
            if depth > 1:
                options = [f for f in options if f != "cond"]
        if not options:
            options = ["unary_total"]
        feat = self.pick(options, "feature")
        _STEPS[feat](self, b, layer, depth)

    def applicable(self, feat: str) -> bool:
        if feat in ("linear", "quant", "sparse", "norm", "matmul"):
            return any(self.static_last(v) for v in self.pool)
        if feat == "attention":
            return any(self.attn_ready(v) for v in self.pool)
        if feat in ("rope", "embedding"):
            return False  # used inside attention / at the start only
        return True

    def static_last(self, v: Value) -> bool:
        return v.type.rank >= 1 and isinstance(v.type.shape[-1], int) and v.type.shape[-1] >= 1

    def attn_ready(self, v: Value) -> bool:
        t = v.type
        return (
            t.rank == 3
            and t.shape[0] == self.B
            and t.shape[1] == self.S
            and isinstance(t.shape[2], int)
            and t.dtype == "f32"
        )

    def choose(self, pred: Any, label: str) -> Value:
        cands = [v for v in self.pool if pred(v)]
        return self.pick(cands, label)

    # -- params --------------------------------------------------------------------------------
    def dense_param(self, name: str, value: torch.Tensor) -> Param:
        p = Param.dense(f"{name}{self.uid()}" if name in self.g.params else name, value)
        self.g.root().params[p.name] = p
        return p

    def weight(self, out_f: int, in_f: int, name: str) -> Param:
        """A [out, in] weight in a storage format the enabled features allow."""
        pname = f"{name}.{self.uid()}.weight"
        kinds = ["dense"]
        if "quant" in self.feats:
            kinds.append("quant")
        if "sparse" in self.feats:
            kinds += ["nm", "unstructured"]
        if "quant" in self.feats and "sparse" in self.feats:
            kinds.append("quant_nm")
        if in_f % 2:
            kinds = [k for k in kinds if "nm" not in k]  # no N:M pattern fits
        kind = self.pick(kinds, "weight format")
        std = 1.0 / math.sqrt(in_f)
        mask = None
        sparsity = None
        if kind in ("nm", "quant_nm"):
            nm = self.pick([(n, m) for n, m in ((1, 2), (2, 4), (1, 4), (4, 8)) if in_f % m == 0])
            mask = _nm_mask(out_f, in_f, nm[0], nm[1], self.gen)
            sparsity = SparsitySpec("nm", nm[0], nm[1], nm[0] / nm[1])
        elif kind == "unstructured":
            mask = torch.rand(out_f, in_f, generator=self.gen) < 0.5
            sparsity = SparsitySpec("unstructured", density=float(mask.float().mean()))
        if kind in ("dense", "nm", "unstructured"):
            w = self.rand(out_f, in_f) * std
            if mask is not None:
                w = w * mask
            p = Param(pname, TensorType((out_f, in_f), "f32"), StorageFormat(None, sparsity))
            p.data["value"] = w
        else:
            symmetric = self.flip("symmetric")
            bits = self.pick((2, 3, 4, 8) if symmetric else (2, 3, 4), "bits")
            group = self.pick(sorted({0, in_f, *(g for g in (2, 4, 8) if in_f % g == 0)}), "group")
            q = QuantSpec(bits, group, symmetric, self.pick(("rtn", "gptq"), "method"))
            groups = 1 if group == 0 else in_f // group
            codes = torch.randint(q.qmin, q.qmax + 1, (out_f, in_f), generator=self.gen)
            data = {"scale": torch.rand(out_f, groups, generator=self.gen) * std / 2 ** (bits - 1)}
            data["scale"] = data["scale"] + std / 2**bits
            if not symmetric:
                zero = torch.randint(q.qmin, q.qmax + 1, (out_f, groups), generator=self.gen)
                data["zero"] = zero.to(torch.int8)
                zfull = zero.repeat_interleave(in_f // groups, dim=1)
            else:
                zfull = torch.zeros_like(codes)
            if mask is not None:
                codes = torch.where(mask, codes, zfull)
            data["qvalue"] = codes.to(torch.int8)
            p = Param(pname, TensorType((out_f, in_f), "f32"), StorageFormat(q, sparsity), data)
        self.g.root().params[p.name] = p
        return p

    # -- features ------------------------------------------------------------------------------
    def squash(self, b: GraphBuilder, v: Value) -> Value:
        """``v`` if it is small enough to multiply, else ``tanh(v)``."""
        if self.m(v) <= _MAG_LIMIT or not v.type.is_float:
            return v
        out = b.emit("tanh", v)
        self.mag[id(out)] = 1.0
        return out

    def unary(self, b: GraphBuilder, layer: int, depth: int, total_only: bool = False) -> None:
        v = self.choose(lambda v: v.type.is_float, "unary operand")
        ops = _TOTAL_UNARY if total_only else _TOTAL_UNARY + _GUARDED_UNARY
        op = self.pick(ops, "unary op")
        mv = self.m(v)
        if op in _TOTAL_UNARY:
            kw: dict[str, Any] = {}
            if op == "gelu" and self.flip("gelu tanh"):
                kw["approximate"] = "tanh"
            out = b.emit(op, v, name=self.name_hint(op), **kw)
            self.add(out, 1.0 if op in ("sigmoid", "tanh", "sin", "cos") else mv + 1.0)
            return
        if op == "exp":
            out = b.emit("exp", b.emit("tanh", v), name=self.name_hint("e"))
            self.add(out, 3.0)
            return
        # log / sqrt / rsqrt of abs(v) + 1
        one = b.emit("constant", value=1.0)
        pos = b.emit("add", b.emit("abs", v), one)
        out = b.emit(op, pos, name=self.name_hint(op))
        self.add(out, mv + 1.0)

    def binary(self, b: GraphBuilder, layer: int, depth: int) -> None:
        v = self.choose(lambda v: v.type.is_float, "binary operand")
        kinds = ["self", "same", "constant", "reduced"]
        if v.type.rank >= 1 and isinstance(v.type.shape[-1], int):
            kinds.append("param")
        kind = self.pick(kinds, "partner")
        if kind == "self":
            w = v
        elif kind == "same":
            w = self.choose(lambda u: u.type == v.type, "same-type partner")
        elif kind == "constant":
            w = b.emit("constant", value=self.pick((0.5, -2.0, 3.0, 1e-05), "constant"))
            self.mag[id(w)] = 3.0
        elif kind == "param":
            shape = (v.type.shape[-1],) if self.flip("param rank 1") else (1, v.type.shape[-1])
            p = self.dense_param(f"bias{self.uid()}", self.rand(*shape))
            w = b.param(p.name, p)
            self.mag[id(w)] = 4.0
        else:  # reduced: broadcast a keepdim reduction back over v
            if v.type.rank == 0:
                w = v
            else:
                axes = sorted(
                    self.draw(st.sets(st.integers(0, v.type.rank - 1), min_size=1), label="axes")
                )
                op = self.pick(("reduce_mean", "reduce_max"), "reduce op")
                w = b.emit(op, v, dims=tuple(axes), keepdim=True)
                self.mag[id(w)] = self.m(v)
        if self.flip("swap operands"):
            v, w = w, v
        op = self.pick(("add", "sub", "mul", "div", "pow", "maximum", "minimum", "where"), "op")
        mv, mw = self.m(v), self.m(w)
        if op == "mul":
            out = b.emit("mul", self.squash(b, v), self.squash(b, w), name=self.name_hint("prod"))
            mag = min(mv, _MAG_LIMIT) * min(mw, _MAG_LIMIT)
        elif op == "div":
            den = b.emit("add", b.emit("abs", w), b.emit("constant", value=1.0))
            out = b.emit("div", v, den)
            mag = mv
        elif op == "pow":
            base = b.emit("add", b.emit("abs", b.emit("tanh", v)), b.emit("constant", value=0.5))
            out = b.emit("pow", base, b.emit("constant", value=self.pick((2.0, 0.5, -1.0))))
            mag = 4.0
        elif op == "where":
            cmp = self.pick(("lt", "gt", "le", "ge", "eq"), "comparison")
            c = b.emit(cmp, v, w)
            out = b.emit("where", c, v, w, name=self.name_hint("sel"))
            mag = max(mv, mw)
        else:
            out = b.emit(op, v, w, name=self.name_hint(op))
            mag = mv + mw
        self.add(out, mag)

    def linear(self, b: GraphBuilder, layer: int, depth: int) -> None:
        v = self.choose(self.static_last, "linear operand")
        in_f = int(v.type.shape[-1])
        out_f = self.pick((4, 8) if depth else (4, 8, 16), "out features")
        if depth:  # inside a region the result must keep the operand's type
            out_f = in_f
        part = self.pick(("up_proj", "down_proj", "gate_proj"), "proj")
        scope = f"model.layers.{layer}.mlp.{part}"
        w = self.weight(out_f, in_f, scope)
        with b.scope(scope, block="ffn"):
            args = [v, b.param(w.name, w)]
            if self.flip("bias"):
                bias = self.dense_param(f"{scope}.{self.uid()}.bias", self.rand(out_f) * 0.1)
                args.append(b.param(bias.name, bias))
            out = b.emit("linear", *args, name=self.name_hint(part))
        self.add(out, 2.0 * self.m(v) + 1.0)

    def norm(self, b: GraphBuilder, layer: int, depth: int) -> None:
        v = self.choose(lambda v: self.static_last(v) and v.type.is_float, "norm operand")
        h = int(v.type.shape[-1])
        op = self.pick(("softmax", "rms_norm", "layer_norm"), "norm op")
        scope = f"model.layers.{layer}.input_layernorm"
        with b.scope(scope, block="norm"):
            if op == "softmax":
                dim = self.draw(st.integers(-v.type.rank, v.type.rank - 1), label="softmax dim")
                kw = {} if dim == -1 else {"dim": dim}
                self.add(b.emit("softmax", v, name=self.name_hint("p"), **kw), 1.0)
                return
            args = [v]
            n_extra = self.draw(st.integers(0, 1 if op == "rms_norm" else 2), label="affine")
            for i in range(n_extra):
                p = self.dense_param(f"{scope}.{self.uid()}.{('weight', 'bias')[i]}", self.rand(h))
                args.append(b.param(p.name, p))
            eps = self.pick((1e-06, 1e-05), "eps")
            out = b.emit(op, *args, eps=eps, name=self.name_hint("norm"))
        self.add(out, 4.0 * math.sqrt(h) + 4.0)

    def reduce(self, b: GraphBuilder, layer: int, depth: int) -> None:
        v = self.choose(lambda v: v.type.rank >= 1 and v.type.is_float, "reduce operand")
        axes = self.draw(st.sets(st.integers(-v.type.rank, -1), min_size=1), label="reduce axes")
        op = self.pick(("reduce_sum", "reduce_mean", "reduce_max"), "reduce op")
        out = b.emit(op, v, dims=tuple(sorted(axes)), keepdim=self.flip("keepdim"))
        n = 1.0
        for a in axes:
            d = v.type.shape[a]
            n *= d if isinstance(d, int) else 8
        self.add(out, self.m(v) * (n if op == "reduce_sum" else 1.0))

    def matmul(self, b: GraphBuilder, layer: int, depth: int) -> None:
        v = self.choose(lambda v: v.type.rank >= 2 and self.static_last(v), "matmul operand")
        v = self.squash(b, v)
        k = int(v.type.shape[-1])
        if self.flip("matmul by param"):
            w = self.dense_param(f"proj{self.uid()}", self.rand(k, self.pick((2, 4, 8))) / k**0.5)
            out = b.emit("matmul", v, b.param(w.name, w))
            self.add(out, 2.0 * self.m(v) + 1.0)
        else:
            perm = list(range(v.type.rank))
            perm[-1], perm[-2] = perm[-2], perm[-1]
            vt = b.emit("permute", v, perm=tuple(perm))
            out = b.emit("matmul", v, vt, name=self.name_hint("gram"))
            self.add(out, min(self.m(v), _MAG_LIMIT) ** 2 * k)

    def layout(self, b: GraphBuilder, layer: int, depth: int) -> None:
        v = self.choose(lambda v: v.type.rank >= 1, "layout operand")
        kind = self.pick(("reshape", "permute", "slice", "concat", "index_select", "cast"))
        t = v.type
        mag = self.m(v)
        if kind == "reshape":
            shape = self._reshape_target(t)
            if shape is None:
                kind = "permute"
            else:
                self.add(b.emit("reshape", v, shape=shape, name=self.name_hint("r")), mag)
                return
        if kind == "permute":
            perm = tuple(self.draw(st.permutations(range(t.rank)), label="perm"))
            self.add(b.emit("permute", v, perm=perm), mag)
        elif kind == "slice":
            ax = self.draw(st.integers(0, t.rank - 1), label="slice axis")
            d = t.shape[ax]
            dim = ax - t.rank if self.flip("negative axis") else ax
            if isinstance(d, int) and d >= 1:
                start = self.draw(st.integers(0, d - 1), label="start")
                end = self.draw(st.integers(start + 1, d), label="end")
                step = self.draw(st.integers(1, 2), label="step")
                attrs: dict[str, Any] = {"dim": dim, "start": start, "end": end, "step": step}
                if self.flip("negative start"):
                    attrs = {"dim": dim, "start": -self.draw(st.integers(1, d))}
            elif isinstance(self.P, SymDim) and d == dim_add(self.P, self.S):
                attrs = {"dim": dim, "start": self.P}  # drop the cache part: length seq
            else:
                attrs = self.pick(({"dim": dim, "start": -1}, {"dim": dim, "start": 0, "end": 1}))
            self.add(b.emit("slice", v, **attrs, name=self.name_hint("s")), mag)
        elif kind == "concat":
            ax = self.draw(st.integers(0, t.rank - 1), label="concat axis")
            if t.rank == 3 and t.shape[:2] == (self.B, self.S) and ax == 1 and self.flip("cache"):
                cache = b.input(
                    f"cache{self.uid()}", TensorType((self.B, self.P, t.shape[2]), t.dtype)
                )
                self.add(
                    b.emit("concat", cache, v, dim=1, name=self.name_hint("cat")), max(mag, 4.0)
                )
                return
            same = [u for u in self.pool if u.type == t]
            n = self.draw(st.integers(1, 3), label="concat arity")
            args = [self.pick(same, "concat operand") for _ in range(n)]
            mag = max(self.m(a) for a in args)
            self.add(b.emit("concat", *args, dim=ax - t.rank if self.flip() else ax), mag)
        elif kind == "index_select":
            ax = self.draw(st.integers(0, t.rank - 1), label="index axis")
            d = t.shape[ax]
            if not isinstance(d, int) or d == 0:
                self.add(b.emit("permute", v, perm=tuple(range(t.rank))), mag)
                return
            n = self.draw(st.integers(1, 4), label="index count")
            idx = torch.randint(0, d, (n,), generator=self.gen)
            p = self.dense_param(f"index{self.uid()}", idx)
            self.add(b.emit("index_select", v, b.param(p.name, p), dim=ax), mag)
        else:  # cast round trip through a narrower float type (or int and back)
            if not t.is_float:
                self.add(b.emit("cast", v, dtype="f32"), mag)
                return
            mid = self.pick(("f16", "bf16", "f64"), "cast dtype")
            lo = b.emit("cast", self.squash(b, v) if mid == "f16" else v, dtype=mid)
            self.add(b.emit("cast", lo, dtype=t.dtype, name=self.name_hint("c")), mag)

    def _reshape_target(self, t: TensorType) -> tuple[Dim, ...] | None:
        shape = list(t.shape)
        opts = []
        if t.rank >= 2:
            opts.append("merge")
        if any(isinstance(d, int) and d >= 2 and d % 2 == 0 for d in shape):
            opts.append("split")
        if t.rank < 5:
            opts.append("unsqueeze")
        if 1 in shape:
            opts.append("squeeze")
        if not opts:
            return None
        kind = self.pick(opts, "reshape kind")
        if kind == "merge":
            i = self.draw(st.integers(0, t.rank - 2), label="merge at")
            shape[i : i + 2] = [dim_mul(shape[i], shape[i + 1])]
        elif kind == "split":
            i = self.pick(
                [i for i, d in enumerate(shape) if isinstance(d, int) and d >= 2 and d % 2 == 0]
            )
            shape[i : i + 1] = (
                [2, shape[i] // 2] if self.flip("split order") else [shape[i] // 2, 2]
            )
        elif kind == "unsqueeze":
            shape.insert(self.draw(st.integers(0, t.rank), label="unsqueeze at"), 1)
        else:
            shape.pop(shape.index(1))
        out: list[Dim] = list(shape)
        if out and self.flip("use -1"):
            i = self.draw(st.integers(0, len(out) - 1), label="-1 at")
            trial = list(out)
            trial[i] = -1
            # Only when the shape rule recovers exactly the intended dim.
            from llmc.ir.ops import ReshapeAttrs, _reshape_infer

            try:
                if _reshape_infer([t], ReshapeAttrs(tuple(trial)), None).shape == tuple(out):
                    out = trial
            except Exception:
                pass
        return tuple(out)

    def attention(self, b: GraphBuilder, layer: int, depth: int) -> None:
        x = self.choose(self.attn_ready, "attention input")
        x = self.squash(b, x)
        hid = int(x.type.shape[2])
        kvh = self.pick((1, 2), "kv heads")
        heads = kvh * self.pick((1, 2), "group size")
        d = self.pick((2, 4, 8), "head dim")
        base = f"model.layers.{layer}.self_attn"
        use_cache = self.flip("kv cache")
        use_rope = "rope" in self.feats and self.flip("rope")
        with b.scope(base, block="attn"):
            proj = {}
            for name, nh in (("q", heads), ("k", kvh), ("v", kvh)):
                w = self.weight(nh * d, hid, f"{base}.{name}_proj")
                with b.scope(f"{base}.{name}_proj"):
                    y = b.emit("linear", x, b.param(w.name, w), name=self.name_hint(name))
                shape: tuple[Dim, ...] = (self.B, self.S, nh, d)
                if self.flip("reshape with -1"):
                    shape = (self.B, -1, nh, d)
                y = b.emit("reshape", y, shape=shape)
                proj[name] = b.emit("permute", y, perm=(0, 2, 1, 3))
            if use_rope:
                if self.pos is None:
                    self.pos = b.input("positions", TensorType((self.B, self.S), "i64"))
                rope_kw: dict[str, Any] = {}
                if self.flip("rope options"):
                    rope_kw = {
                        "theta": self.pick((10000.0, 500000.0)),
                        "rotary_dim": self.pick((0, 2) if d > 2 else (0,)),
                        "interleaved": self.flip("interleaved"),
                        "scaling": self.pick(("", "linear", "llama3")),
                        "factor": 2.0,
                    }
                with b.scope(base, block="rope"):
                    for name in ("q", "k"):
                        proj[name] = b.emit("rope", proj[name], self.pos, **rope_kw)
            if use_cache:
                for name in ("k", "v"):
                    cache = b.input(
                        f"{name}_cache{self.uid()}", TensorType((self.B, kvh, self.P, d), "f32")
                    )
                    proj[name] = b.emit("concat", cache, proj[name], dim=2)
            attn_kw: dict[str, Any] = {}
            if self.flip("non-causal"):
                attn_kw["causal"] = False
            if self.flip("window"):
                attn_kw["window"] = self.pick((1, 2, 3))
            if self.flip("scale"):
                attn_kw["scale"] = 0.5
            o = b.emit("attention", proj["q"], proj["k"], proj["v"], name="attn", **attn_kw)
            o = b.emit("permute", o, perm=(0, 2, 1, 3))
            o = b.emit("reshape", o, shape=(self.B, self.S, heads * d))
            wo = self.weight(hid, heads * d, f"{base}.o_proj")
            with b.scope(f"{base}.o_proj"):
                out = b.emit("linear", o, b.param(wo.name, wo), name=self.name_hint("o"))
        self.add(out, 4.0 * self.m(x) + 4.0)

    def cond(self, b: GraphBuilder, layer: int, depth: int) -> None:
        v = self.choose(lambda v: v.type.is_float, "cond operand")
        operands = [v]
        same = [u for u in self.pool if u.type == v.type and u is not v]
        if same and self.flip("two operands"):
            operands.append(self.pick(same, "second cond operand"))
        # Inside a region the predicate must be computed there (no capture of outer values).
        if depth > 0 or ("reduce" in self.feats and self.flip("computed predicate")):
            m = v
            if v.type.rank:
                m = b.emit("reduce_max", v, dims=tuple(range(v.type.rank)))
            pred = b.emit("gt", m, b.emit("constant", value=0.0), name=self.name_hint("is_pos"))
        else:
            if self.pred is None:
                self.pred = b.input("pred", TensorType((), "bool"))
            pred = self.pred
        regions = [self.region(operands, layer, depth + 1) for _ in range(2)]
        mags = [m for _, m in regions]
        with b.scope(f"model.layers.{layer}", block=self.pick(("", "skip"), "cond block")):
            out = b.emit(
                "cond",
                pred,
                *operands,
                then_branch=regions[0][0],
                else_branch=regions[1][0],
                name=self.name_hint("branch"),
            )
        self.add(out, max(mags))

    def region(self, operands: list[Value], layer: int, depth: int) -> tuple[Graph, float]:
        r = Graph("region")
        r.parent = self.g
        for i, v in enumerate(operands):
            name = self.g.fresh_name(f"arg{i}")
            r.inputs.append(Value(name, v.type))  # fresh_name already claimed the name
        rb = GraphBuilder(graph=r)
        saved = self.pool
        self.pool = list(r.inputs)
        for v, a in zip(operands, r.inputs):
            self.mag[id(a)] = self.m(v)
        want = operands[0].type
        for _ in range(self.draw(st.integers(0, 3), label="region steps")):
            self.step(rb, layer, depth)
        results = [u for u in self.pool if u.type == want]
        out = self.pick(results, "region result")
        self.pool = saved
        r.outputs = [out]
        return r, self.m(out)


def _nm_mask(out_f: int, in_f: int, n: int, m: int, gen: torch.Generator) -> torch.Tensor:
    """Keep at most ``n`` random positions in every group of ``m`` along the last axis."""
    scores = torch.rand(out_f, in_f // m, m, generator=gen)
    keep = scores.argsort(dim=-1).argsort(dim=-1) < n
    return keep.reshape(out_f, in_f)


_STEPS = {
    "unary": _Gen.unary,
    "unary_total": lambda self, b, layer, depth: _Gen.unary(self, b, layer, depth, True),
    "binary": _Gen.binary,
    "linear": _Gen.linear,
    "quant": _Gen.linear,  # a linear whose weight format may be quantized
    "sparse": _Gen.linear,
    "layout": _Gen.layout,
    "norm": _Gen.norm,
    "reduce": _Gen.reduce,
    "matmul": _Gen.matmul,
    "attention": _Gen.attention,
    "cond": _Gen.cond,
}
