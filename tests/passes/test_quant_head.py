"""The quantization passes and the LM head: quantized by default at ``head_bits`` (a tied head
through its own copy of the table, the embedding left float), kept float with ``head=false``."""

from __future__ import annotations

import pytest
import torch

from llmc.ir import QuantSpec, verify
from llmc.passes import PassContext, PassOptionError, build_pipeline
from llmc.runtime.interp import run
from tests.passes.test_fuzz_regressions import _batch, _tied_lm


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def _head(g):
    return next(n for n in g.nodes if n.block == "head" and n.op in ("linear", "qlinear_a8"))


@pytest.mark.parametrize("spec", ["rtn:bits=4:group=8", "gptq:bits=4:group=8", "w8a8"])
def test_a_tied_head_gets_a_quantized_copy(spec: str) -> None:
    g, x = _tied_lm(vocab=64, hidden=32), _batch(64)
    g.meta["tie_word_embeddings"] = True
    table = g.params["model.embed_tokens.weight"].value().clone()
    want = run(g, x)[0]
    report = build_pipeline(spec).run(g, PassContext(calib_inputs=[x]))
    verify(g)
    emb = g.params["model.embed_tokens.weight"]
    assert emb.format.is_dense and torch.equal(emb.value(), table)  # the lookup stays exact
    head = g.params["lm_head.weight"]
    assert head.format.quant is not None and head.format.quant.bits == 8
    assert g.param_of(_head(g).inputs[1]) is head
    assert report[0]["head"] == {"bits": 8, "params": ["lm_head.weight"]}
    assert g.meta["tie_word_embeddings"] is False  # an exporter writes the head's own weight
    assert rel(run(g, x)[0], want) < 0.02  # 8-bit head (the body is the embedding only)
    g2 = g.copy()  # the printed IR round-trips with the new param node
    torch.testing.assert_close(run(g2, x)[0], run(g, x)[0])


@pytest.mark.parametrize("spec", ["rtn:bits=4:group=8:head=false", "w8a8:head=false"])
def test_head_false_keeps_a_tied_head_float(spec: str) -> None:
    g, x = _tied_lm(), _batch()
    want = run(g, x)[0]
    build_pipeline(spec).run(g, PassContext(calib_inputs=[x]))
    assert set(g.params) == {"model.embed_tokens.weight", "model.norm.weight"}
    assert _head(g).op == "linear" and g.params["model.embed_tokens.weight"].format.is_dense
    torch.testing.assert_close(run(g, x)[0], want)


def test_untied_head_bits_and_include(lm, ctx) -> None:
    g = lm.copy()
    build_pipeline("rtn:bits=4:group=32:head_bits=4").run(g, ctx)
    assert g.params["lm_head.weight"].format.quant == QuantSpec(4, 32, True, "rtn")
    assert not any(n.attrs.name.endswith(".1") for n in g.nodes if n.op == "param")
    g = lm.copy()  # an include that names other layers leaves the head alone
    build_pipeline("rtn:bits=4:include=down_proj").run(g, ctx)
    assert g.params["lm_head.weight"].format.is_dense
    g = lm.copy()  # quantized once: a second pass does not touch a head the first quantized
    build_pipeline("rtn:include=up_proj|lm_head,w8a8:include=down_proj|lm_head").run(g, ctx)
    assert [n.op for n in g.nodes if n.block == "head" and n.op != "param"] == ["linear"]
    assert g.params["lm_head.weight"].format.quant.bits == 8


def test_head_bits_is_checked() -> None:
    with pytest.raises(PassOptionError, match="head_bits must be in 2..8"):
        build_pipeline("rtn:head_bits=12")


def test_architecture_only_gpt2_head_is_quantized() -> None:
    """GPT-2's tied head (154 of 219 MB per decode step in f32) gets an int8 copy on meta params
    too, so the roofline and the kernel class see it; the embedding stays f32."""
    from llmc.codesign.roofline import kernel_class
    from llmc.frontends import zoo

    g = zoo.build("gpt2")
    build_pipeline("rtn:bits=4:group=128").run(g, PassContext())
    head = g.params["lm_head.weight"]
    assert head.is_meta and head.format.quant == QuantSpec(8, 128, True, "rtn")
    assert g.params["transformer.wte.weight"].format.is_dense
    assert head.storage_bytes() < 50257 * 768 * 1.1
    assert kernel_class(g) == "int4 weight-only"
