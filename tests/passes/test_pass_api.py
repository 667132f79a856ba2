"""The pass API: spec parsing, options, registry, recipes, PassManager errors, instruments,
rewrite helpers."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Literal

import pytest
import torch

from llmc.errors import LlmcError
from llmc.ir import GraphBuilder, TensorType, sym
from llmc.passes import (
    Pass,
    PassContext,
    PassManager,
    PassOptionError,
    PipelineError,
    PrintAfter,
    SpecError,
    Timing,
    UnknownPassError,
    build_pipeline,
    get_pass,
    list_passes,
    parse_spec,
    register_pass,
    registry,
)
from llmc.passes.registry import unregister_pass
from llmc.passes.rewrite import Rule, apply_rules, find_matches, is_param, replace_pattern
from llmc.runtime.interp import run


def mlp():
    b = GraphBuilder("mlp")
    x = b.input("x", TensorType((sym("batch"), 8), "f32"))
    with b.scope("fc1", "ffn"):
        h = b.emit("linear", x, b.param("fc1.weight", torch.randn(16, 8)))
    h = b.emit("relu", h)
    with b.scope("fc2", "ffn"):
        y = b.emit("linear", h, b.param("fc2.weight", torch.randn(4, 16)))
    b.output(y)
    return b.finish()


# ------------------------------------------------------------------------------------ spec


@pytest.mark.parametrize(
    "spec, want",
    [
        ("dce", [("dce", {})]),
        ("rtn:bits=4:group=128,w8a8", [("rtn", {"bits": "4", "group": "128"}), ("w8a8", {})]),
        ("sparsegpt:pattern=2:4", [("sparsegpt", {"pattern": "2:4"})]),
        (
            "wanda:pattern=4:8:exclude=lm_head|down_proj, smoothquant:alpha=0.5",
            [
                ("wanda", {"pattern": "4:8", "exclude": "lm_head|down_proj"}),
                ("smoothquant", {"alpha": "0.5"}),
            ],
        ),
        ("magnitude : sparsity = 0.5", [("magnitude", {"sparsity": "0.5"})]),
    ],
)
def test_parse_spec(spec, want) -> None:
    assert [(p.name, p.options) for p in parse_spec(spec)] == want


@pytest.mark.parametrize(
    "spec, msg",
    [
        ("", "empty pass spec"),
        ("dce,,cse", "empty pass"),
        ("dce,", "empty pass"),
        ("rtn:4", "must be key=value"),
        ("rtn:", "has ':' but no options"),
        ("rtn:bits=4:bits=8", "given twice"),
        ("9rtn", "bad pass name"),
    ],
)
def test_bad_specs(spec, msg) -> None:
    with pytest.raises(SpecError, match=msg):
        parse_spec(spec)


def test_unknown_pass_suggests_closest() -> None:
    with pytest.raises(
        UnknownPassError, match="unknown pass 'fuse-elementwize'; did you mean 'fuse-elementwise'"
    ):
        build_pipeline("dce,fuse-elementwize")


def test_snake_case_names_and_options() -> None:
    pm = build_pipeline("fuse_elementwise:max-ops=4")
    assert pm.passes[0].name == "fuse-elementwise" and pm.passes[0].max_ops == 4
    assert pm.spec() == "fuse-elementwise:max_ops=4"


# ------------------------------------------------------------------------------------ options


@dataclass(frozen=True)
class Opts(Pass):
    """Options of every kind."""

    name = "opts-test"
    n: int = 1
    x: float = 0.5
    flag: bool = False
    mode: Literal["a", "b"] = "a"
    names: tuple[str, ...] = ("lm_head",)
    maybe: int | None = None

    def check(self) -> None:
        if self.n < 0:
            raise PassOptionError(f"n must be >= 0, got {self.n}")


def test_option_conversion() -> None:
    p = Opts.from_options(
        {"n": "3", "x": "1e-2", "flag": "yes", "mode": "b", "names": "a|b.c", "maybe": "none"}
    )
    assert (p.n, p.x, p.flag, p.mode, p.names, p.maybe) == (3, 0.01, True, "b", ("a", "b.c"), None)
    assert Opts.from_options({"maybe": "7"}).maybe == 7
    assert p.spec() == "opts-test:n=3:x=0.01:flag=true:mode=b:names=a|b.c"


@pytest.mark.parametrize(
    "opts, msg",
    [
        ({"n": "x"}, "option n must be an integer, got 'x'"),
        ({"x": "abc"}, "option x must be a number"),
        ({"flag": "maybe"}, "must be true or false"),
        ({"mode": "c"}, "must be one of a, b"),
        ({"nn": "1"}, "has no option 'nn'; did you mean 'n'"),
        ({"n": "-1"}, "pass 'opts-test': n must be >= 0, got -1"),
    ],
)
def test_bad_options(opts, msg) -> None:
    with pytest.raises(PassOptionError, match=msg):
        Opts.from_options(opts)


# ------------------------------------------------------------------------------------ registry


def test_register_pass_decorator_and_errors() -> None:
    @register_pass
    @dataclass(frozen=True)
    class Noop(Pass):
        """Do nothing."""

        name = "noop-test"

    try:
        assert get_pass("noop_test") is Noop
        assert ("noop-test", "Do nothing.") in list_passes()
        with pytest.raises(LlmcError, match="already registered"):
            register_pass(type("Other", (Noop,), {}))
        with pytest.raises(LlmcError, match="built-in llmc pass"):
            register_pass(type("Dce", (Noop,), {"name": "dce"}))
        with pytest.raises(LlmcError, match="not a subclass"):
            register_pass(object)  # type: ignore[arg-type]
    finally:
        unregister_pass("noop-test")
    with pytest.raises(UnknownPassError):
        get_pass("noop-test")


def test_list_passes_has_one_line_docs() -> None:
    rows = dict(list_passes())
    for name in ("dce", "cse", "const-fold", "fuse-elementwise", "async-softmax"):
        assert rows[name] and "\n" not in rows[name]


def test_every_pass_in_the_package_is_builtin() -> None:
    """A pass class decorated in ``llmc/passes`` but missing from ``BUILTIN`` would only exist
    once something imported its module: ``llmc compile --passes NAME`` would call it unknown."""
    import ast
    from pathlib import Path

    import llmc.passes

    found = {}
    for f in Path(llmc.passes.__file__).parent.glob("*.py"):
        for node in ast.parse(f.read_text()).body:
            if isinstance(node, ast.ClassDef) and any(
                isinstance(d, ast.Name) and d.id == "register_pass" for d in node.decorator_list
            ):
                found[node.name] = f"llmc.passes.{f.stem}:{node.name}"
    assert found and set(found.values()) <= set(registry.BUILTIN.values())


# ------------------------------------------------------------------------------------ recipes


def test_recipe_forms(tmp_path) -> None:
    r = tmp_path / "r.yaml"
    r.write_text(
        "calibration: {samples: 4, seqlen: 16}\n"
        "passes:\n"
        "  - cse\n"
        "  - const-fold: {params: false}\n"
        "  - name: fuse-elementwise\n"
        "    max_ops: 8\n"
        "  - 'dce:params=true'\n"
    )
    pm = build_pipeline(recipe=r)
    assert pm.spec() == "cse,const-fold,fuse-elementwise:max_ops=8,dce"
    ctx = PassContext()
    pm.run(mlp(), ctx)
    assert (ctx.calib_samples, ctx.calib_seqlen) == (4, 16)


@pytest.mark.parametrize(
    "text, msg",
    [
        ("passes: [", "invalid YAML"),
        ("{}", "non-empty list"),
        ("passes: [dce]\nextra: 1\n", "unknown recipe key"),
        ("- dce: 3\n", "must be a mapping"),
        ("- [dce]\n", "expected a name"),
        ("calibration: {bogus: 1}\npasses: [dce]\n", "'calibration' must be a mapping"),
    ],
)
def test_bad_recipes(tmp_path, text, msg) -> None:
    r = tmp_path / "bad.yaml"
    r.write_text(text)
    with pytest.raises(SpecError, match=msg):
        build_pipeline(recipe=r)


def test_missing_recipe_names_the_file(tmp_path) -> None:
    with pytest.raises(SpecError, match="nope.yaml: cannot read recipe"):
        build_pipeline(recipe=tmp_path / "nope.yaml")


def test_spec_and_recipe_are_exclusive(tmp_path) -> None:
    with pytest.raises(SpecError, match="not both"):
        build_pipeline("dce", tmp_path / "r.yaml")


# ------------------------------------------------------------------------------------ manager


@dataclass(frozen=True)
class Boom(Pass):
    """Raise."""

    name = "boom"

    def run(self, graph, ctx) -> None:
        raise ValueError("kaput")


@dataclass(frozen=True)
class Breaker(Pass):
    """Leave a linear reading its own weight as the input."""

    name = "breaker"

    def run(self, graph, ctx) -> None:
        n = graph.find("linear")[0]
        n.inputs = (n.inputs[1], n.inputs[1])


def test_failing_pass_is_named_with_its_predecessors() -> None:
    pm = PassManager([get_pass("cse")(), get_pass("dce")(), Boom()])
    with pytest.raises(PipelineError) as ei:
        pm.run(mlp())
    msg = str(ei.value)
    assert "pass 'boom' (#3 of 3, after cse, dce) failed with ValueError: kaput" in msg
    assert ei.value.pass_name == "boom" and ei.value.before == ["cse", "dce"]


def test_pass_leaving_invalid_ir_is_named() -> None:
    pm = PassManager([Breaker(), get_pass("dce")()])
    with pytest.raises(
        PipelineError,
        match=r"pass 'breaker' \(#1 of 2, as the first pass\) left the IR invalid: \[types\]",
    ):
        pm.run(mlp())


def test_invalid_input_graph_is_not_blamed_on_a_pass() -> None:
    g = mlp()
    n = g.find("linear")[0]
    n.inputs = (n.inputs[1], n.inputs[1])
    with pytest.raises(LlmcError, match="invalid before any pass ran"):
        build_pipeline("dce").run(g)


def test_instruments_print_time_and_dump(tmp_path) -> None:
    out, table = io.StringIO(), io.StringIO()
    pm = build_pipeline("cse,dce")
    pm.add_instrument(PrintAfter({"dce"}, out))
    timing = Timing(table)
    pm.add_instrument(timing)
    pm.dump_ir(tmp_path / "ir")
    report = pm.run(mlp())
    assert out.getvalue().startswith("// ----- IR after dce (#2) -----\ngraph @mlp {")
    assert "IR after cse" not in out.getvalue()
    assert [r for r, _ in timing.rows] == ["cse", "dce"]
    assert table.getvalue().count(" s ") == 2
    assert sorted(p.name for p in (tmp_path / "ir").iterdir()) == [
        "00-input.ir",
        "01-cse.ir",
        "02-dce.ir",
    ]
    assert [r["pass"] for r in report] == ["cse", "dce"]
    assert all(r["seconds"] >= 0 for r in report) and report.total_seconds() >= 0


def test_report_records_what_passes_did() -> None:
    b = GraphBuilder("g")
    x = b.input("x", TensorType((2, 3), "f32"))
    b.emit("exp", x)
    b.output(b.emit("neg", x))
    report = build_pipeline("dce").run(b.finish())
    assert report[0]["nodes_removed"] == 1 and report[0]["options"] == {"params": True}


# ------------------------------------------------------------------------------------ rewrites


def test_rule_table_and_pattern_rewrites() -> None:
    b = GraphBuilder("g")
    x = b.input("x", TensorType((sym("batch"), 8), "f32"))
    w = b.param("w", torch.randn(8, 8))
    y = b.emit("relu", b.emit("linear", x, w))
    z = b.emit("neg", b.emit("neg", y))
    b.output(b.emit("abs", b.emit("abs", z)))
    g = b.finish()
    xs = [torch.randn(3, 8)]
    ref = run(g, xs)[0]

    # abs(abs(x)) -> abs(x), as a rule table entry
    rules = [
        Rule(
            ("abs",),
            lambda n, rw: n.inputs[0] if n.inputs[0].node.op == "abs" else None,
            "abs(abs(x)) -> abs(x)",
        )
    ]
    assert apply_rules(g, rules) == 1

    # neg(neg(x)) -> x, as two functions
    assert replace_pattern(g, lambda p, x: p.emit("neg", p.emit("neg", x)), lambda b, x: x) == 1

    # relu(linear(x, w)) with w a param -> linear then relu re-emitted (structure only)
    pat = lambda p, x, w: p.emit("relu", p.emit("linear", x, w))  # noqa: E731
    assert len(find_matches(g, pat, where={"w": is_param})) == 1
    assert len(find_matches(g, pat, where={"x": is_param})) == 0
    g.dce()
    assert [n.op for n in g.nodes] == ["param", "linear", "relu", "abs"]
    torch.testing.assert_close(run(g, xs)[0], ref)


def test_pattern_attrs_must_match() -> None:
    b = GraphBuilder("g")
    x = b.input("x", TensorType((4, 8), "f32"))
    s0 = b.emit("softmax", x, dim=0)
    b.output(b.emit("softmax", x), s0)
    g = b.finish()
    assert len(find_matches(g, lambda p, x: p.emit("softmax", x, dim=0))) == 1
    assert len(find_matches(g, lambda p, x: p.emit("softmax", x))) == 2
    with pytest.raises(LlmcError, match="same placeholders"):
        replace_pattern(g, lambda p, x: p.emit("softmax", x), lambda b, y: y)
