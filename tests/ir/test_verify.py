"""One test per verifier rule: a mutation of a valid graph that breaks an invariant, the rule that
must report it and a fragment of its message. Valid graphs (hand-built and random) pass.
``test_every_rule_is_exercised`` fails when a rule is added to ``verify.RULES`` without a case.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from hypothesis import HealthCheck, given, settings

from llmc.errors import VerifyError
from llmc.ir import Graph, Node, TensorType, check, verify
from llmc.ir.graph import Value
from llmc.ir.ops import GeluAttrs, NormAttrs
from llmc.ir.params import Param, QuantSpec, SparsitySpec, StorageFormat
from llmc.ir.types import sym
from llmc.ir.verify import RULES
from tests.hypothesis_profiles import examples
from tests.ir.examples import GOLDEN_GRAPHS, llama_block, mlp, quantized, with_cond
from tests.ir.strategies import graphs

# ---------------------------------------------------------------------------------- helpers


def node(g: Graph, name: str) -> Node:
    """The node defining %name, regions included."""
    for _, n in g.walk():
        if n.out.name == name:
            return n
    raise KeyError(name)


def region_of(g: Graph, name: str, field: str) -> Graph:
    return getattr(node(g, name).attrs, field)


# Each mutation takes a fresh valid graph and breaks it.


def undefined_operand(g: Graph) -> None:
    n = node(g, "y")
    n.inputs = (Value("ghost", n.inputs[0].type), n.inputs[1])


def use_before_def(g: Graph) -> None:
    y = node(g, "y")
    g.nodes.remove(y)
    g.nodes.insert(0, y)


def duplicate_name(g: Graph) -> None:
    node(g, "y").out.name = "h"


def duplicate_input_name(g: Graph) -> None:
    node(g, "h").out.name = "x"


def unknown_op(g: Graph) -> None:
    node(g, "0").op = "frobnicate"


def wrong_arity(g: Graph) -> None:
    n = node(g, "1")  # add(%x, %y)
    n.inputs = n.inputs[:1]


def wrong_attrs_type(g: Graph) -> None:
    node(g, "0").attrs = NormAttrs()  # gelu wants GeluAttrs


def attrs_on_plain_op(g: Graph) -> None:
    node(g, "1").attrs = GeluAttrs()  # add takes none


def attrs_as_dict(g: Graph) -> None:
    node(g, "fc2.weight").attrs = {"name": "fc2.weight"}


def recorded_type_mismatch(g: Graph) -> None:
    node(g, "y").out.type = TensorType((2, 9), "f32")


def recorded_dtype_mismatch(g: Graph) -> None:
    node(g, "0").out.type = TensorType((2, 16), "f16")


def shape_rule_fails(g: Graph) -> None:
    h = node(g, "h")
    h.inputs = (h.inputs[0], node(g, "fc2.weight").out, h.inputs[2])  # [8, 16] vs x [2, 8]


def undefined_output(g: Graph) -> None:
    g.outputs = [Value("nowhere", TensorType((2, 8), "f32"))]


def value_not_owned(g: Graph) -> None:
    node(g, "y").out.node = node(g, "h")


def missing_param(g: Graph) -> None:
    del g.params["fc2.weight"]


def non_static_param(g: Graph) -> None:
    p = g.params["fc1.bias"]
    g.params["fc1.bias"] = Param(p.name, TensorType((sym("n"),), "f32"), p.format, p.data)


def dense_value_mismatch(g: Graph) -> None:
    g.params["fc1.bias"].data["value"] = torch.zeros(17)


def dense_value_dtype(g: Graph) -> None:
    g.params["fc1.bias"].data["value"] = torch.zeros(16, dtype=torch.float16)


def dense_without_value(g: Graph) -> None:
    g.params["fc1.bias"].data = {}


def _quantize_fc2(g: Graph, bits: int = 4, group: int = 4, symmetric: bool = True) -> Param:
    p = quantized("fc2.weight", 8, 16, bits, group, symmetric, seed=5)
    g.params["fc2.weight"] = p
    return p


def quant_codes_out_of_range(g: Graph) -> None:
    p = _quantize_fc2(g)
    p.data["qvalue"][0, 0] = 8  # int4 symmetric: [-8, 7]


def quant_codes_out_of_range_asym(g: Graph) -> None:
    p = _quantize_fc2(g, bits=2, symmetric=False)
    p.data["qvalue"][3, 3] = -1  # uint2: [0, 3]


def quant_scale_shape(g: Graph) -> None:
    p = _quantize_fc2(g, group=4)
    p.data["scale"] = torch.ones(8, 2)  # 16 / 4 = 4 groups


def quant_group_not_dividing(g: Graph) -> None:
    p = _quantize_fc2(g, group=4)
    g.params["fc2.weight"] = Param(p.name, p.type, StorageFormat(QuantSpec(4, 5, True)), p.data)


def quant_asym_without_zero(g: Graph) -> None:
    p = _quantize_fc2(g, symmetric=False)
    del p.data["zero"]


def quant_without_codes(g: Graph) -> None:
    p = _quantize_fc2(g)
    del p.data["qvalue"]


def nm_violated(g: Graph) -> None:
    p = g.params["model.layers.0.self_attn.v_proj.weight"]
    p.data["value"] = torch.ones(8, 16)  # 4 non-zeros in every group of 4, N = 2


def nm_violated_quantized(g: Graph) -> None:
    p = g.params["model.layers.0.self_attn.o_proj.weight"]  # int4 sym, 1:2
    p.data["qvalue"][0, 1] = 3


def nm_m_not_dividing(g: Graph) -> None:
    p = g.params["model.layers.0.self_attn.v_proj.weight"]
    g.params[p.name] = Param(
        p.name, p.type, StorageFormat(None, SparsitySpec("nm", 2, 3, 0.66)), p.data
    )


def bad_scope(g: Graph) -> None:
    node(g, "y").scope = "fc2..weight"


def bad_scope_chars(g: Graph) -> None:
    node(g, "y").scope = "layers/3 mlp"


def bad_block_tag(g: Graph) -> None:
    node(g, "y").block = "mlp"


def region_captures_outer_value(g: Graph) -> None:
    then = region_of(g, "gated", "then_branch")
    add = then.nodes[0]
    add.inputs = (add.inputs[0], g.inputs[1])  # %y of the parent graph


def region_output_captures(g: Graph) -> None:
    keep = region_of(g, "13", "else_branch")
    keep.outputs = [g.inputs[0]]


def cond_branch_types_differ(g: Graph) -> None:
    keep = region_of(g, "13", "else_branch")
    b_n = keep.make_node("reduce_sum", [keep.inputs[0]], {"dims": (0, 1)}, name="total")
    keep.append(b_n)
    keep.outputs = [b_n.out]


def cond_region_inputs_mismatch(g: Graph) -> None:
    keep = region_of(g, "13", "else_branch")
    keep.inputs[0].type = TensorType((sym("batch"), 5), "f32")


def cond_pred_not_bool(g: Graph) -> None:
    n = node(g, "13")
    n.inputs = (g.inputs[0], *n.inputs[1:])


def duplicate_name_across_region(g: Graph) -> None:
    then = region_of(g, "gated", "then_branch")
    then.nodes[0].out.name = "pred"


def pruned_lm() -> Graph:
    from tests.lm_fixtures import toy_lm

    return toy_lm(layers=2, prune=(1, 1, 3))


def gather_symbol_not_fresh(g: Graph) -> None:
    n = next(n for n in g.nodes if n.op == "gather_rows")
    n.attrs = type(n.attrs)(length="past_0", dim=n.attrs.dim)


CASES: list[tuple[str, Callable[[], Graph], Callable[[Graph], None], str, str]] = [
    # (case, builder, mutation, rule, message fragment)
    ("undefined operand", mlp, undefined_operand, "ssa", "%ghost is not defined before use"),
    ("use before def", mlp, use_before_def, "ssa", "is not defined before use"),
    ("duplicate name", mlp, duplicate_name, "ssa", "value %h defined twice"),
    ("duplicate input name", mlp, duplicate_input_name, "ssa", "value %x defined twice"),
    ("undefined output", mlp, undefined_output, "ssa", "output %nowhere is not defined"),
    ("value not owned", mlp, value_not_owned, "ssa", "not owned by its node"),
    ("unknown op", mlp, unknown_op, "ops", "unknown op 'frobnicate'"),
    ("wrong arity", mlp, wrong_arity, "ops", "takes 2 inputs, got 1"),
    ("wrong attrs type", mlp, wrong_attrs_type, "ops", "attributes must be GeluAttrs"),
    ("attrs on plain op", mlp, attrs_on_plain_op, "ops", "takes no attributes"),
    ("attrs as dict", mlp, attrs_as_dict, "ops", "attributes must be ParamAttrs, got dict"),
    ("recorded type", mlp, recorded_type_mismatch, "types", "recorded type f32[2, 9]"),
    ("recorded dtype", mlp, recorded_dtype_mismatch, "types", "recorded type f16[2, 16]"),
    ("shape rule fails", mlp, shape_rule_fails, "types", "does not match weight"),
    ("missing param", mlp, missing_param, "params", "param @fc2.weight does not exist"),
    ("non-static param", mlp, non_static_param, "params", "shape must be static"),
    ("dense value shape", mlp, dense_value_mismatch, "params", "value shape (17,)"),
    ("dense value dtype", mlp, dense_value_dtype, "params", "value dtype torch.float16"),
    ("dense without value", mlp, dense_without_value, "params", "needs data['value']"),
    ("quant codes range", mlp, quant_codes_out_of_range, "params", "outside int4 range [-8, 7]"),
    ("asym codes range", mlp, quant_codes_out_of_range_asym, "params", "outside int2 range [0, 3]"),
    ("quant scale shape", mlp, quant_scale_shape, "params", "scale shape (8, 2) != (8, 4)"),
    ("quant group", mlp, quant_group_not_dividing, "params", "not divisible by group 5"),
    ("asym without zero", mlp, quant_asym_without_zero, "params", "needs data['zero']"),
    ("quant without codes", mlp, quant_without_codes, "params", "needs data['qvalue']"),
    ("N:M violated", llama_block, nm_violated, "params", "holds 4 non-zeros, more than N=2"),
    ("N:M violated (quant)", llama_block, nm_violated_quantized, "params", "more than N=1"),
    ("N:M bad M", llama_block, nm_m_not_dividing, "params", "not divisible by M=3"),
    ("bad scope", mlp, bad_scope, "provenance", "invalid scope 'fc2..weight'"),
    ("bad scope chars", mlp, bad_scope_chars, "provenance", "invalid scope"),
    ("bad block tag", mlp, bad_block_tag, "provenance", "unknown block tag 'mlp'"),
    ("region capture", with_cond, region_captures_outer_value, "ssa", "region of %gated"),
    ("region output capture", with_cond, region_output_captures, "ssa", "output %x"),
    (
        "region duplicate name",
        with_cond,
        duplicate_name_across_region,
        "ssa",
        "%pred defined twice",
    ),
    ("cond branch types", with_cond, cond_branch_types_differ, "types", "different types"),
    ("cond region inputs", with_cond, cond_region_inputs_mismatch, "types", "region inputs"),
    ("cond predicate", with_cond, cond_pred_not_bool, "types", "predicate must be a bool scalar"),
    ("fresh symbol", pruned_lm, gather_symbol_not_fresh, "symbols", "past_0 is bound by a graph"),
]


@pytest.mark.parametrize(
    ("build", "mutate", "rule", "fragment"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_rule_fires(
    build: Callable[[], Graph], mutate: Callable[[Graph], None], rule: str, fragment: str
) -> None:
    g = build()
    assert check(g) == []
    mutate(g)
    findings = check(g)  # never raises, whatever the damage
    hits = [f for f in findings if f.startswith(f"[{rule}]") and fragment in f]
    assert hits, f"expected a [{rule}] finding containing {fragment!r}, got {findings}"
    with pytest.raises(VerifyError) as err:
        verify(g, "after test-pass")
    assert err.value.errors == findings
    assert str(err.value).startswith("after test-pass: IR verification failed: ")


def test_every_rule_is_exercised() -> None:
    covered = {c[3] for c in CASES}
    assert covered == set(RULES), f"rules without a failing case: {sorted(set(RULES) - covered)}"


def test_findings_are_collected_not_stopped_at_the_first() -> None:
    g = mlp()
    bad_block_tag(g)
    missing_param(g)
    recorded_type_mismatch(g)
    rules = {f.split("]")[0][1:] for f in check(g)}
    assert {"provenance", "params", "types"} <= rules


def test_error_message_lists_at_most_five() -> None:
    g = mlp()
    for n in g.nodes:
        n.block = "nope"
    with pytest.raises(VerifyError, match=r"\(\+5 more\)"):
        verify(g)


def test_check_with_a_subset_of_rules() -> None:
    g = mlp()
    bad_block_tag(g)
    assert check(g, {"ssa": RULES["ssa"]}) == []
    assert check(g, {"provenance": RULES["provenance"]})


# ---------------------------------------------------------------------------------- valid graphs


@pytest.mark.parametrize("name", sorted(GOLDEN_GRAPHS))
def test_hand_built_graphs_pass(name: str) -> None:
    verify(GOLDEN_GRAPHS[name]())


@settings(max_examples=examples(0.75), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(graphs())
def test_random_graphs_pass(g: Graph) -> None:
    assert check(g) == []


def test_meta_params_pass() -> None:
    """Params without data (architecture-only models) skip the data checks."""
    g = llama_block()
    for name, p in list(g.params.items()):
        g.params[name] = Param(
            p.name, p.type, p.format, {k: t.to("meta") for k, t in p.data.items()}
        )
    assert check(g) == []
