"""Architecture-only models: meta params, real parameter counts and costs, fast builds."""

from __future__ import annotations

import time

import pytest
import torch

from llmc.analysis import graph_cost, param_summary
from llmc.frontends import load_model, zoo
from llmc.frontends.hf import from_hf_model
from llmc.ir import verify
from llmc.runtime.interp import run
from tests.frontend.hf_models import VOCAB, make


def test_llama2_7b_meta_fast_and_right():
    t = time.perf_counter()
    m = load_model("llama2-7b")
    elapsed = time.perf_counter() - t
    g = m.graph
    assert elapsed < 10, f"building llama2-7b took {elapsed:.1f}s"
    assert all(p.is_meta for p in g.params.values())
    verify(g)
    assert param_summary(g)["parameters"] == 6_738_415_616
    assert g.meta["num_layers"] == 32 and g.meta["dtype"] == "f16"
    assert len(g.inputs) == 2 + 64 and len(g.outputs) == 1 + 64
    assert m.source == "zoo:llama2-7b" and m.config["hidden_size"] == 4096
    # One decode step after 1023 tokens: ~2 FLOPs per weight plus attention; the traffic is the
    # fp16 weights plus the KV cache, read twice (by the cache concat and by attention).
    c = graph_cost(g, {"batch": 1, "seq": 1, "past": 1023})
    n = 6_738_415_616
    embed = 32000 * 4096
    attn = 32 * 32 * 1024 * 128 * 4
    assert c.total.flops == pytest.approx(2 * (n - embed) + attn, rel=0.01)
    kv = 32 * 2 * 1023 * 4096 * 2
    assert c.total.bytes_read == pytest.approx(2 * (n - embed) + 2 * kv, rel=0.01)
    assert c.by_block["ffn"].flops == pytest.approx(32 * 2 * 3 * 4096 * 11008, rel=0.01)


@pytest.mark.parametrize("name", [n for n in zoo.names() if n != "llama2-7b"])
def test_zoo_param_counts(name):
    g = zoo.build(name)
    assert param_summary(g)["parameters"] == zoo.PARAM_COUNTS[name]
    cfg = zoo.config(name)
    assert g.meta["num_layers"] == cfg.get("num_hidden_layers", cfg.get("n_layer"))
    assert sum(n.op == "attention" for n in g.nodes) == g.meta["num_layers"]
    if name == "mistral-7b":
        assert {n.attrs.window for n in g.find("attention")} == {4096}
    if name == "llama3-8b":
        assert {n.attrs.theta for n in g.find("rope")} == {500000.0}
        assert g.meta["num_kv_heads"] == 8
    if name == "falcon-7b":
        assert g.meta["num_kv_heads"] == 1 and g.meta["head_dim"] == 64  # multi-query
    if name.startswith("gemma"):
        # every layer has its type's window (and, for Gemma 3, its rope base), although only
        # one layer of each type was traced
        kinds = g.meta["layer_types"]
        assert len(kinds) == g.meta["num_layers"]
        windows = [n.attrs.window for n in g.find("attention")]
        assert windows == [cfg["sliding_window"] if k == "sliding_attention" else 0 for k in kinds]
        thetas = [n.attrs.theta for n in g.find("rope")][::2]
        local = cfg.get("rope_local_base_freq", cfg["rope_theta"])
        assert thetas == [local if k == "sliding_attention" else cfg["rope_theta"] for k in kinds]
        caps = {n.attrs.softcap for n in g.find("attention")}
        assert caps == {cfg.get("attn_logit_softcapping") or 0.0}
    if name == "gemma-3-1b":
        assert g.meta["layer_types"][:6] == ["sliding_attention"] * 5 + ["full_attention"]
    verify(g)


def test_replicated_layer_types_compute_like_the_deep_model():
    """Gemma 3 built with one sliding and one full layer, replicated to four layers of types
    [sliding, sliding, full, sliding] == the 4-layer HF model (layers 1-3 copy layer 1)."""
    small = make("gemma3")
    kinds = ["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"]
    cfg = small.config.to_dict()
    deep = type(small)(type(small.config).from_dict(
        {**cfg, "num_hidden_layers": 4, "layer_types": kinds})).eval()  # fmt: skip
    sd = small.state_dict()
    for k, v in list(sd.items()):
        if k.startswith("model.layers.1."):
            for j in (2, 3):
                sd[k.replace("model.layers.1.", f"model.layers.{j}.")] = v
    deep.load_state_dict(sd)
    g = from_hf_model(small, name="rep", num_layers=4, layer_types=kinds)
    assert g.meta["layer_types"] == kinds
    ids = torch.randint(0, VOCAB, (2, 9), generator=torch.Generator().manual_seed(3))
    past = [torch.zeros(2, g.meta["num_kv_heads"], 0, g.meta["head_dim"])] * 8
    got = run(g, [ids, torch.arange(9).expand(2, -1), *past])[0]
    with torch.no_grad():
        want = deep(input_ids=ids, use_cache=False).logits
    assert float((got - want).abs().max() / want.abs().max()) <= 1e-4


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_replicated_layers_compute_like_the_deep_model(family):
    """2 real layers replicated to 4 == the 4-layer HF model whose layers 2, 3 copy layer 1."""
    small = make(family)
    cfg = small.config.to_dict()
    key = "n_layer" if family == "gpt2" else "num_hidden_layers"
    deep = type(small)(type(small.config).from_dict({**cfg, key: 4})).eval()
    sd = small.state_dict()
    layers = "transformer.h" if family == "gpt2" else "model.layers"
    for k, v in list(sd.items()):
        if k.startswith(f"{layers}.1."):
            for j in (2, 3):
                sd[k.replace(f"{layers}.1.", f"{layers}.{j}.")] = v
    deep.load_state_dict(sd)
    g = from_hf_model(small, name="rep", num_layers=4)
    assert g.meta["num_layers"] == 4
    ids = torch.randint(0, VOCAB, (2, 6), generator=torch.Generator().manual_seed(3))
    past = [torch.zeros(2, g.meta["num_kv_heads"], 0, g.meta["head_dim"])] * 8
    got = run(g, [ids, torch.arange(6).expand(2, -1), *past])[0]
    with torch.no_grad():
        want = deep(input_ids=ids, use_cache=False).logits
    assert float((got - want).abs().max() / want.abs().max()) <= 1e-4


def test_materialize_seeded_and_runnable():
    with torch.device("meta"):
        meta_model = type(make("llama"))(make("llama").config).eval()
    g = from_hf_model(meta_model, name="m", num_layers=3)
    assert all(p.is_meta for p in g.params.values())
    a = zoo.materialize(g.copy(), seed=7)
    b = zoo.materialize(g.copy(), seed=7)
    c = zoo.materialize(g.copy(), seed=8)
    w = "model.layers.2.mlp.up_proj.weight"
    assert torch.equal(a.params[w].value(), b.params[w].value())
    assert not torch.equal(a.params[w].value(), c.params[w].value())
    assert float(a.params[w].value().std()) == pytest.approx(0.02, rel=0.1)
    assert torch.equal(a.params["model.norm.weight"].value(), torch.ones(64))
    verify(a)
    ids = torch.randint(0, VOCAB, (1, 4))
    past = [torch.zeros(1, 2, 0, 16)] * 6
    out = run(a, [ids, torch.arange(4)[None], *past])[0]
    assert out.shape == (1, 4, VOCAB) and torch.isfinite(out).all()


def test_zoo_graphs_are_cached_on_disk(tmp_path, monkeypatch):
    from llmc.ir.printer import print_graph

    monkeypatch.setenv("LLMC_CACHE_DIR", str(tmp_path))
    first = zoo.build("gpt2")
    (entry,) = (tmp_path / "zoo").glob("gpt2-*.ir")
    t = time.perf_counter()
    second = zoo.build("gpt2")
    assert time.perf_counter() - t < 2.0  # parsed, not traced
    assert print_graph(second) == print_graph(first)
    assert all(p.is_meta for p in second.params.values()) and second.meta["zoo"] == "gpt2"
    # another dtype is another entry; a damaged entry is rebuilt; "off" writes nothing
    zoo.build("gpt2", dtype="f32")
    assert len(list((tmp_path / "zoo").glob("gpt2-*.ir"))) == 2
    entry.write_text("graph @broken {")
    assert print_graph(zoo.build("gpt2")) == print_graph(first)
    monkeypatch.setenv("LLMC_CACHE_DIR", "off")
    assert zoo.cache_path("gpt2", zoo.config("gpt2"), None) is None
