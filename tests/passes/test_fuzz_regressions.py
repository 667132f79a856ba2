"""Regression tests for bugs the differential fuzzers (``tests/test_fuzz_*.py``) found in passes.

Each test is the minimal graph the fuzzer shrank to, built by hand, with the property it broke.
"""

from __future__ import annotations

import torch

from llmc.ir import Graph, GraphBuilder, TensorType, sym
from llmc.passes import PassContext, build_pipeline
from llmc.runtime.interp import run


def _tied_lm(vocab: int = 16, hidden: int = 16) -> Graph:
    """embedding -> rms_norm -> linear whose weight is the embedding table (a tied LM head)."""
    g = torch.Generator().manual_seed(0)
    b = GraphBuilder("tied")
    ids = b.input("input_ids", TensorType((sym("batch"), sym("seq")), "i64"))
    b.input("positions", TensorType((sym("batch"), sym("seq")), "i64"))
    table = b.param("model.embed_tokens.weight", torch.randn(vocab, hidden, generator=g))
    with b.scope("model.embed_tokens", "embed"):
        h = b.emit("embedding", ids, table)
    with b.scope("model.norm", "norm"):
        nw = b.param("model.norm.weight", 1 + 0.1 * torch.randn(hidden, generator=g))
        h = b.emit("rms_norm", h, nw, eps=1e-5)
    with b.scope("lm_head", "head"):
        b.output(b.emit("linear", h, table, name="logits"))
    graph = b.finish()
    graph.meta = {"abi": "llmc-lm-v1", "vocab_size": vocab, "max_position_embeddings": 16}
    return graph


def _batch(vocab: int = 16) -> dict[str, torch.Tensor]:
    ids = torch.randint(0, vocab, (2, 5), generator=torch.Generator().manual_seed(1))
    return {"input_ids": ids, "positions": torch.arange(5).expand(2, 5).contiguous()}


def test_smoothquant_leaves_a_tied_lm_head_alone() -> None:
    """Found by test_exact_passes_match_the_interpreter: smoothquant scaled the columns of a
    tied LM head's weight, which is also the embedding table, so the embedding changed
    (logits off by ~1 in f32; the rewrite must be exact)."""
    g, x = _tied_lm(), _batch()
    want = run(g, x)[0]
    g2 = g.copy()
    spec = "smoothquant:alpha=0.5:exclude="  # the head too (excluded by default)
    report = build_pipeline(spec).run(g2, PassContext(calib_inputs=[x]))
    torch.testing.assert_close(run(g2, x)[0], want, rtol=1e-5, atol=1e-5)
    assert report[0]["groups"] == 0 and "also read outside" in report[0]["skipped"][0]


def test_flap_refuses_to_break_an_nm_pattern() -> None:
    """Found by test_any_pipeline_succeeds_or_refuses_cleanly: FLAP removed input channels of an
    N:M-sparse down_proj, leaving groups with more than N non-zeros (the verifier failed after
    the pass). It now refuses with a message that says what to do."""
    from tests.lm_fixtures import toy_lm

    g = toy_lm(layers=1, hidden=16, heads=2, kv_heads=1, ffn=32, vocab=16)
    x = _batch()
    x["past_k_0"] = x["past_v_0"] = torch.zeros(2, 1, 0, 8)
    ctx = PassContext(calib_inputs=[x])
    build_pipeline("magnitude:pattern=2:4").run(g, ctx)
    try:
        build_pipeline("flap:ratio=0.25:align=8").run(g, ctx)
    except Exception as e:  # noqa: BLE001
        assert "run flap before N:M pruning" in str(e), e
    else:
        raise AssertionError("flap accepted an N:M-sparse down_proj")
    build_pipeline("flap:ratio=0.0:align=1").run(g, ctx)  # removing nothing is fine


def test_default_exclude_keeps_a_tied_lm_head_dense() -> None:
    """Found while reducing the smoothquant case: ``lm_head`` is excluded by default, but a tied
    head's weight is named after the embedding table, so rtn/wanda/... compressed it (and the
    embedding with it). Exclusion now also matches the linear's scope."""
    from llmc.passes.select import select_linears

    g = _tied_lm()
    assert select_linears(g) == []
    assert [t.path for t in select_linears(g, exclude=())] == ["model.embed_tokens"]
    g2 = g.copy()
    build_pipeline("rtn:bits=4:group=8").run(g2, PassContext(calib_inputs=[_batch()]))
    assert g2.params["model.embed_tokens.weight"].format.is_dense


def test_smoothquant_leaves_a_channel_it_never_saw_alone_in_f16() -> None:
    """Found by test_any_pipeline_succeeds_or_refuses_cleanly (``wanda:pattern=2:4:exclude=``
    then smoothquant twice, f16): the calibration token's embedding row had a pruned (zero)
    channel, so its activation absmax was 0, clamped to 1e-5; the scale for it came out tiny and
    the norm's weight divided by it grew 300x per pass until float16 overflowed (NaN logits).
    Such a channel now keeps scale 1, and a fold that would leave the dtype's range is refused."""
    hidden, vocab = 16, 16
    g = torch.Generator().manual_seed(0)
    table = torch.randn(vocab, hidden, generator=g)
    table[12, 3] = 0.0  # the channel the calibration never sees nonzero
    b = GraphBuilder("f16")
    ids = b.input("input_ids", TensorType((sym("batch"), sym("seq")), "i64"))
    b.input("positions", TensorType((sym("batch"), sym("seq")), "i64"))
    t = b.param("model.embed_tokens.weight", table.half())
    with b.scope("model.embed_tokens", "embed"):
        h = b.emit("embedding", ids, t)
    with b.scope("model.norm", "norm"):
        nw = b.param("model.norm.weight", (1 + 0.1 * torch.randn(hidden, generator=g)).half())
        h = b.emit("rms_norm", h, nw, eps=1e-5)
    with b.scope("lm_head", "head"):
        w = b.param("lm_head.weight", torch.randn(vocab, hidden, generator=g).half())
        b.output(b.emit("linear", h, w, name="logits"))
    graph = b.finish()
    graph.meta = {"abi": "llmc-lm-v1", "vocab_size": vocab, "max_position_embeddings": 16}
    x = {"input_ids": torch.tensor([[12]]), "positions": torch.tensor([[0]])}
    want = run(graph, x)[0]
    spec = "smoothquant:alpha=0.5:exclude=,smoothquant:alpha=0.85:exclude="
    g2 = graph.copy()
    build_pipeline(spec).run(g2, PassContext(calib_inputs=[x]))
    got = run(g2, x)[0]
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got.float(), want.float(), rtol=2e-2, atol=2e-2)
    assert float(g2.params["model.norm.weight"].value().float().abs().max()) < 1e3
