"""Layer folding (llmc.fpga.fold) and the layer truncation it rests on (canon.truncate_layers)."""

from __future__ import annotations

import functools
import math

import pytest
import torch

from llmc.fpga.arch import load_arch
from llmc.fpga.compress import compress
from llmc.fpga.fold import FoldedCosts, costs_for, foldable
from llmc.fpga.perf import PerfModel
from llmc.fpga.program import build_program
from llmc.fpga.sim import simulate
from llmc.frontends.canon import truncate_layers
from llmc.ir import verify
from llmc.runtime.lm import InterpLM

# A Llama-shaped architecture-only model with 8 identical layers (tiny's widths).
SMALL_LLAMA = {
    "architectures": ["LlamaForCausalLM"],
    "hidden_act": "silu",
    "hidden_size": 256,
    "intermediate_size": 704,
    "max_position_embeddings": 2048,
    "model_type": "llama",
    "num_attention_heads": 4,
    "num_hidden_layers": 8,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
    "torch_dtype": "float16",
    "vocab_size": 4096,
}


@functools.lru_cache(maxsize=1)
def _small_llama():
    from llmc.frontends import zoo

    return zoo._build("small-llama", dict(SMALL_LLAMA), None)


def small_llama(recipe: str = "int4-8of16"):
    g = _small_llama()
    from llmc.frontends.canon import truncate_layers as _t

    g = _t(g, "model.layers", g.meta["num_layers"])  # a private copy (params re-wrapped)
    if recipe == "int4-8of16":
        compress(g, n=8, bits=4, group=64)
    elif recipe == "mixed-layer-3":  # already-quantized params are skipped by the second call
        compress(g, n=4, bits=8, include=("model.layers.3.*",))
        compress(g, n=8, bits=4, group=64)
    return g


def test_truncation_equals_zeroed_layers(tiny_graph):
    """Pre-norm residual layers whose output projections are zero are the identity, so the
    2-layer truncation of tiny computes what tiny computes with layers 2 and 3 zeroed."""
    g = tiny_graph("dense")
    t = truncate_layers(g, "model.layers", 2)
    verify(t)
    assert t.meta["num_layers"] == 2 and g.meta["num_layers"] == 4
    assert [v.name for v in t.inputs] == ["input_ids", "positions"] + [
        f"past_{kv}_{i}" for i in range(2) for kv in "kv"
    ]
    assert [v.name for v in t.outputs][1:] == [f"present_{kv}_{i}" for i in range(2) for kv in "kv"]
    assert not any(".layers.2." in p or ".layers.3." in p for p in t.params)

    z = truncate_layers(g, "model.layers", 4)  # a copy we may change
    for i in (2, 3):
        for proj in ("self_attn.o_proj", "mlp.down_proj"):
            p = z.params[f"model.layers.{i}.{proj}.weight"]
            p.data["value"] = torch.zeros_like(p.data["value"])
    ids = torch.tensor([[5, 17, 99, 3, 200, 42, 7]])
    torch.testing.assert_close(InterpLM(t).logits(ids), InterpLM(z).logits(ids), rtol=0, atol=0)
    # g itself is untouched
    assert g.params["model.layers.2.mlp.down_proj.weight"].value().abs().sum() > 0


def test_truncate_refuses_impossible_requests(tiny_graph):
    from llmc.errors import IRError

    with pytest.raises(IRError, match="cannot keep 5 of 4"):
        truncate_layers(tiny_graph("dense"), "model.layers", 5)


@pytest.mark.parametrize("target", ["u280", "vhk158"])
def test_folded_simulation_equals_full(target):
    g = small_llama()
    arch = load_arch(target, ["max_tokens=512"])
    prog = build_program(g, arch)
    assert foldable(prog) is None
    a = simulate(prog, arch, 130, 60, fold=True)
    b = simulate(build_program(g, arch), arch, 130, 60, fold=False)
    assert "layer folding: " in a.notes[0] and "0 simulated in full" in a.notes[0]
    # every stream within one cycle of the full simulation, counters exactly
    cyc = 1e3 / arch.clock_hz
    assert abs(a.prefill_ms - b.prefill_ms) <= a.streams["prefill_chunks"] * cyc
    assert abs(a.total_ms - b.total_ms) <= (a.streams["prefill_chunks"] + a.decode_tokens) * cyc
    for key in ("dsp_utilization", "hbm_bandwidth_utilization"):
        assert math.isclose(getattr(a, key), getattr(b, key), rel_tol=1e-6), key
    assert a.instruction_storage == b.instruction_storage
    assert a.breakdown["by_layer_ms"].keys() == b.breakdown["by_layer_ms"].keys()
    for layer, units in b.breakdown["by_layer_ms"].items():
        for unit, ms in units.items():
            assert math.isclose(a.breakdown["by_layer_ms"][layer][unit], ms, rel_tol=1e-9), layer
    for op, rec in b.breakdown["by_instruction"].items():
        assert a.breakdown["by_instruction"][op]["count"] == rec["count"], op


def test_fold_declines_when_layers_differ():
    g = small_llama("mixed-layer-3")
    prog = build_program(g, load_arch("u280", ["max_tokens=512"]))
    assert "layer 3 differs" in foldable(prog)
    rep = simulate(prog, prog.arch, 16, 4)
    assert rep.notes[-1].startswith("layer folding off: layer 3 differs")


def test_fold_falls_back_per_stream_when_prediction_fails(monkeypatch):
    """A stream whose 4-layer copy the formula does not predict is simulated in full."""
    import llmc.fpga.fold as fold

    g = small_llama()
    arch = load_arch("u280", ["max_tokens=512"])
    prog = build_program(g, arch)
    costs = costs_for(prog, PerfModel(arch))
    assert isinstance(costs, FoldedCosts)
    monkeypatch.setattr(fold, "_predicts", lambda pred, got: False)
    full = costs.perf("decode", 32)
    assert costs.fallbacks == [("decode", 32)]
    from llmc.fpga.perf import simulate_stream

    assert full.cycles == simulate_stream(prog.stream("decode", 32).instrs, PerfModel(arch)).cycles
