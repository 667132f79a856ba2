"""llmc.ir.structure: layers and blocks in every frontend family's scope naming, and the LM ABI."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from llmc.ir import GraphBuilder, TensorType, sym
from llmc.ir.structure import (
    LM_ABI_V2,
    LMAbiError,
    Structure,
    block_tag,
    check_kv_lengths,
    check_lm_abi,
    layer_label,
    layer_of,
    layer_prefix,
    rename_layer,
    split_layer,
)
from tests.lm_fixtures import toy_lm

PREFIXES = {
    "llama": "model.layers",
    "mistral": "model.layers",
    "qwen2": "model.layers",
    "opt": "model.decoder.layers",
    "gpt2": "transformer.h",
    "gpt_neox": "gpt_neox.layers",
}


@pytest.mark.parametrize(
    "scope, want",
    [
        ("model.layers.3.mlp.down_proj", ("model.layers", 3, "mlp.down_proj")),
        ("model.decoder.layers.11.fc1", ("model.decoder.layers", 11, "fc1")),
        ("transformer.h.0.attn.c_attn", ("transformer.h", 0, "attn.c_attn")),
        ("gpt_neox.layers.2", ("gpt_neox.layers", 2, "")),
        ("blocks.7.mixer", ("blocks", 7, "mixer")),
        ("model.embed_tokens", None),
        ("transformer.h", None),
        ("lm_head", None),
        ("model.layers.x.mlp", None),
    ],
)
def test_split_layer_without_prefix(scope, want):
    assert split_layer(scope) == want


def test_prefix_is_exact():
    assert layer_of("model.layers.3.mlp", "model.layers") == 3
    assert layer_of("model.layersx.3.mlp", "model.layers") is None
    assert layer_of("other.model.layers.3", "model.layers") is None
    assert layer_of("transformer.h.12", "transformer.h") == 12
    assert rename_layer("transformer.h.1.mlp.c_fc.weight", "transformer.h", 1, 5) == (
        "transformer.h.5.mlp.c_fc.weight"
    )
    assert rename_layer("transformer.h.10.mlp", "transformer.h", 1, 5) == "transformer.h.10.mlp"
    assert layer_label("transformer.h.4.attn") == "layer 4" and layer_label("lm_head") is None


@pytest.mark.parametrize(
    "op, scope, tag",
    [
        ("linear", "model.layers.0.mlp.down_proj", "ffn"),
        ("linear", "model.decoder.layers.0.fc1", "ffn"),
        ("linear", "transformer.h.0.attn.c_attn", "attn"),
        ("linear", "gpt_neox.layers.0.attention.dense", "attn"),
        ("rms_norm", "model.layers.0.mlp", "norm"),  # op tags win
        ("embedding", "transformer.wpe", "embed"),
        ("linear", "lm_head", "head"),
        ("add", "model.layers.0", ""),
    ],
)
def test_block_tags(op, scope, tag):
    assert block_tag(op, scope) == tag


@pytest.fixture(scope="module", params=sorted(PREFIXES))
def family_graph(request):
    from llmc.frontends.hf import from_hf_model
    from tests.frontend.hf_models import make

    return request.param, from_hf_model(make(request.param), name=request.param)


def _check_two_layer_lm(g, prefix: str) -> None:
    assert layer_prefix(g) == prefix
    s = Structure(g)
    assert s.layers == [0, 1]
    assert s.contiguous() and not any(s.interleaved(i) for i in s.layers)
    for i in s.layers:
        assert s.blocks(i, "attn") and s.blocks(i, "ffn"), f"layer {i} has attn and ffn blocks"
        assert [n.op for n in s.blocks(i, "attn") if n.op == "attention"] == ["attention"]
        assert all(n.scope.startswith(f"{prefix}.{i}") or not n.scope for n in s.nodes(i))
    # every residual add lies in a layer or after the last one; nothing of the head is in a layer
    head = [n for n in g.nodes if n.block in ("head", "embed")]
    assert head and all(s.layer(n) is None for n in head)
    labels = [label for label, _ in s.segments()]
    assert labels == ["pre", "layers.0", "layers.1"]
    abi = check_lm_abi(g)
    assert abi.num_layers == 2 and abi.uniform and abi.rows == (sym("seq"),) * 2


def test_every_family(family_graph):
    fam, g = family_graph
    _check_two_layer_lm(g, PREFIXES[fam])
    # the prefix is found from the scopes alone, too
    g2 = g.copy()
    g2.meta.pop("layer_prefix")
    assert layer_prefix(g2) == PREFIXES[fam]


def test_toy_and_tiny():
    _check_two_layer_lm(toy_lm(layers=2), "model.layers")
    from llmc.frontends import load_model

    g = load_model("tiny").graph
    s = Structure(g)
    assert s.layers == list(range(g.meta["num_layers"]))
    assert all(s.blocks(i, "ffn") for i in s.layers)


def test_unscoped_glue_belongs_to_its_span():
    g = toy_lm(layers=2)
    s = Structure(g)
    adds = [n for n in g.nodes if n.op == "add" and not n.scope]
    assert [s.layer(n) for n in adds] == [0, 0, 1, 1]


def test_lm_abi_checks():
    g = toy_lm(layers=2)
    abi = check_lm_abi(g)
    assert abi.past == (sym("past"),) * 2 and abi.version == "llmc-lm-v1"
    check_kv_lengths(abi, [3, 3])
    with pytest.raises(LMAbiError, match="layers 0 and 1 hold 3 and 2 positions"):
        check_kv_lengths(abi, [3, 2])
    with pytest.raises(LMAbiError, match="2 layers, the model 3"):
        check_kv_lengths(check_lm_abi(toy_lm(layers=3)), [0, 0])
    bad = toy_lm(layers=2)
    bad.meta["abi"] = "llmc-lm-v9"
    with pytest.raises(LMAbiError, match="unknown LM ABI 'llmc-lm-v9'"):
        check_lm_abi(bad)
    bad = toy_lm(layers=2)
    bad.inputs[3].name = "cache_v_0"
    with pytest.raises(LMAbiError, match="input 3 is %cache_v_0, expected %past_v_0"):
        check_lm_abi(bad)
    b = GraphBuilder("x")
    b.output(b.input("x", TensorType((2,), "f32")))
    with pytest.raises(LMAbiError, match="does not follow the LM ABI"):
        check_lm_abi(b.finish())


def test_per_layer_lengths_need_v2():
    g = toy_lm(layers=2)
    for v in g.inputs[4:6]:  # layer 1's cache gets its own length
        v.type = TensorType(v.type.shape[:2] + (sym("past_1"),) + v.type.shape[3:], v.type.dtype)
    with pytest.raises(LMAbiError, match="needs meta abi 'llmc-lm-v2'"):
        check_lm_abi(g)
    g.meta["abi"] = LM_ABI_V2
    abi = check_lm_abi(g)
    assert not abi.uniform
    check_kv_lengths(abi, [5, 2])


def test_ir_imports_nothing_above_it():
    """llmc/ir is the bottom layer: it imports only itself and llmc.errors (design.md)."""
    root = Path(__file__).resolve().parents[2] / "llmc" / "ir"
    bad = []
    for f in sorted(root.glob("*.py")):
        for node in ast.walk(ast.parse(f.read_text())):
            mods = []
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                mods = [node.module]
            bad += [
                f"{f.name}: {m}"
                for m in mods
                if m.startswith("llmc") and not m.startswith(("llmc.ir", "llmc.errors"))
            ]
    assert not bad, bad


def test_region_nodes_belong_to_the_layer_of_their_cond():
    from tests.ir.examples import with_cond

    g = with_cond()
    s = Structure(g)
    assert s.layers == [0, 1]
    top = s.nodes(0)
    assert [n.op for n in top] == ["cond"]
    inner = s.nodes(0, regions=True)
    assert len(inner) > len(top) and "mul" in [n.op for n in inner]
    assert s.blocks(1, "skip") == s.nodes(1)
