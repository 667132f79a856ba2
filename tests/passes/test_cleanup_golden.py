"""Golden IR tests: each clean-up pass on a small graph, compared as printed text."""

from __future__ import annotations

import textwrap

import pytest

from llmc.ir import parse_graph, print_graph
from llmc.passes import PassContext, build_pipeline


def apply(spec: str, text: str) -> str:
    g = parse_graph(textwrap.dedent(text))
    build_pipeline(spec).run(g, PassContext())
    return print_graph(g)


def golden(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def test_dce_removes_dead_nodes_and_params() -> None:
    got = apply(
        "dce",
        """
        graph @g {
          param @w : f32[4, 4] dense
          param @unused : f32[4] dense
          input %x : f32[batch, 4]
          %w = param() {name = "w"} : f32[4, 4]
          %u = param() {name = "unused"} : f32[4]
          %dead = add(%x, %u) : f32[batch, 4]
          %y = linear(%x, %w) : f32[batch, 4]
          return %y
        }
        """,
    )
    assert got == golden(
        """
        graph @g {
          param @w : f32[4, 4] dense
          input %x : f32[batch, 4]
          %w = param() {name = "w"} : f32[4, 4]
          %y = linear(%x, %w) : f32[batch, 4]
          return %y
        }
        """
    )


def test_cse_merges_equal_nodes_and_keeps_the_first() -> None:
    got = apply(
        "cse,dce",
        """
        graph @g {
          param @w : f32[4, 4] dense
          input %x : f32[batch, 4]
          %w1 = param() {name = "w"} : f32[4, 4]
          %a = linear(%x, %w1) : f32[batch, 4] @mlp.up #ffn
          %w2 = param() {name = "w"} : f32[4, 4]
          %b = linear(%x, %w2) : f32[batch, 4] @mlp.up #ffn
          %s1 = silu(%a) : f32[batch, 4]
          %s2 = silu(%b) : f32[batch, 4]
          %t = softmax(%s1) {dim = 0} : f32[batch, 4]
          %u = softmax(%s2) : f32[batch, 4]
          %o = mul(%t, %u) : f32[batch, 4]
          return %o
        }
        """,
    )
    assert got == golden(
        """
        graph @g {
          param @w : f32[4, 4] dense
          input %x : f32[batch, 4]
          %w1 = param() {name = "w"} : f32[4, 4]
          %a = linear(%x, %w1) : f32[batch, 4] @mlp.up #ffn
          %s1 = silu(%a) : f32[batch, 4]
          %t = softmax(%s1) {dim = 0} : f32[batch, 4]
          %u = softmax(%s1) : f32[batch, 4]
          %o = mul(%t, %u) : f32[batch, 4]
          return %o
        }
        """
    )


def test_const_fold_identities_and_scalar_folding() -> None:
    got = apply(
        "const-fold",
        """
        graph @g {
          input %x : f32[batch, 8]
          %one = constant() {value = 1.0} : f32[]
          %two = constant() {value = 2.0} : f32[]
          %half = constant() {value = 0.5} : f32[]
          %prod = mul(%two, %half) : f32[]
          %a = mul(%x, %prod) : f32[batch, 8]
          %b = neg(%a) : f32[batch, 8]
          %c = neg(%b) : f32[batch, 8]
          %r1 = reshape(%c) {shape = ["batch", 4, 2]} : f32[batch, 4, 2]
          %r2 = reshape(%r1) {shape = ["batch", 8]} : f32[batch, 8]
          %p1 = permute(%r2) {perm = [1, 0]} : f32[8, batch]
          %p2 = permute(%p1) {perm = [1, 0]} : f32[batch, 8]
          %d = cast(%p2) {dtype = "f32"} : f32[batch, 8]
          %e = add(%d, %one) : f32[batch, 8]
          return %e
        }
        """,
    )
    assert got == golden(
        """
        graph @g {
          input %x : f32[batch, 8]
          %one = constant() {value = 1.0} : f32[]
          %e = add(%x, %one) : f32[batch, 8]
          return %e
        }
        """
    )


def test_const_fold_keeps_broadcasting_identities() -> None:
    # x * 1 where the constant is a [batch, 8] tensor would change the type: x is [8].
    text = """
        graph @g {
          input %x : f32[8]
          input %y : f32[batch, 8]
          %one = constant() {value = 1.0} : f32[]
          %a = add(%x, %y) : f32[batch, 8]
          %b = mul(%a, %one) : f32[batch, 8]
          %c = cast(%b) {dtype = "f16"} : f16[batch, 8]
          return %c
        }
        """
    got = apply("const-fold", text)
    assert "mul" not in got and "cast" in got and "%a = add(%x, %y)" in got


def test_fuse_elementwise_golden() -> None:
    got = apply(
        "fuse-elementwise",
        """
        graph @g {
          param @wg : f32[8, 4] dense
          param @wu : f32[8, 4] dense
          input %x : f32[batch, 4]
          %wg = param() {name = "wg"} : f32[8, 4]
          %wu = param() {name = "wu"} : f32[8, 4]
          %g = linear(%x, %wg) : f32[batch, 8] @mlp.gate_proj #ffn
          %u = linear(%x, %wu) : f32[batch, 8] @mlp.up_proj #ffn
          %s = silu(%g) : f32[batch, 8] @mlp #ffn
          %two = constant() {value = 2.0} : f32[] @mlp #ffn
          %t = mul(%s, %two) : f32[batch, 8] @mlp #ffn
          %m = mul(%t, %u) : f32[batch, 8] @mlp #ffn
          return %m
        }
        """,
    )
    assert got == golden(
        """
        graph @g {
          param @wg : f32[8, 4] dense
          param @wu : f32[8, 4] dense
          input %x : f32[batch, 4]
          %wg = param() {name = "wg"} : f32[8, 4]
          %wu = param() {name = "wu"} : f32[8, 4]
          %g = linear(%x, %wg) : f32[batch, 8] @mlp.gate_proj #ffn
          %u = linear(%x, %wu) : f32[batch, 8] @mlp.up_proj #ffn
          %m = fused_elementwise(%g, %u) {body = region(%g_in : f32[batch, 8], %u_in : f32[batch, 8]) {
              %s = silu(%g_in) : f32[batch, 8] @mlp #ffn
              %two = constant() {value = 2.0} : f32[] @mlp #ffn
              %t = mul(%s, %two) : f32[batch, 8] @mlp #ffn
              %m_r = mul(%t, %u_in) : f32[batch, 8] @mlp #ffn
              return %m_r
            }} : f32[batch, 8] @mlp #ffn
          return %m
        }
        """
    )


def test_fusion_stops_at_values_used_outside_the_chain() -> None:
    got = apply(
        "fuse-elementwise",
        """
        graph @g {
          input %x : f32[batch, 4]
          %a = exp(%x) : f32[batch, 4]
          %b = neg(%a) : f32[batch, 4]
          %c = tanh(%b) : f32[batch, 4]
          %d = add(%c, %x) : f32[batch, 4]
          return %d, %a
        }
        """,
    )
    # %a is an output, so it stays outside: the group is neg, tanh, add.
    assert "%a = exp(%x)" in got
    assert got.count("fused_elementwise") == 1
    assert "%b = neg(%a_in)" in got


@pytest.mark.parametrize("spec", ["dce", "cse", "const-fold", "fuse-elementwise"])
def test_cleanups_are_idempotent(spec: str) -> None:
    text = """
        graph @g {
          input %x : f32[batch, 4]
          %one = constant() {value = 1.0} : f32[]
          %a = mul(%x, %one) : f32[batch, 4]
          %b = exp(%a) : f32[batch, 4]
          %c = exp(%a) : f32[batch, 4]
          %d = add(%b, %c) : f32[batch, 4]
          return %d
        }
        """
    once = apply(spec, text)
    twice = apply(spec, once)
    assert once == twice
