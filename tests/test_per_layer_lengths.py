"""Per-layer sequence lengths (LM ABI llmc-lm-v2): ``gather_rows`` keeps rows with a fresh symbol
bound at run time, positions travel with the kept rows, the KV cache carries a length per layer,
and generation/evaluation run on top of it. The toy LM of tests/lm_fixtures.py drops the tokens
at positions [1, 3) before a chosen layer."""

from __future__ import annotations

import pytest
import torch

from llmc.errors import IRError, LlmcError
from llmc.ir import GraphBuilder, TensorType, check, sym, verify
from llmc.ir.structure import LMAbiError
from llmc.runtime.interp import Interpreter, run
from llmc.runtime.lm import InterpLM, evaluate, generate, kv_lengths
from tests.lm_fixtures import toy_lm

LO, HI = 1, 3  # the fixture drops positions LO <= p < HI


def _empty(layers: int, batch: int = 1) -> list[torch.Tensor]:
    return [torch.zeros(batch, 2, 0, 8)] * (2 * layers)


def test_gather_rows_keeps_order_and_binds_length():
    b = GraphBuilder("g")
    x = b.input("x", TensorType((sym("batch"), sym("seq"), 3), "f32"))
    keep = b.input("keep", TensorType((sym("batch"), sym("seq")), "bool"))
    y = b.emit("gather_rows", x, keep, length="kept")
    b.output(b.emit("reshape", y, shape=(sym("batch") * sym("kept") * 3,)))
    g = b.finish()
    verify(g)
    x = torch.arange(24.0).reshape(2, 4, 3)
    mask = torch.tensor([[True, False, True, False], [False, True, True, False]])
    interp = Interpreter(g)
    (out,) = interp.run({"x": x, "keep": mask})
    assert interp.env["kept"] == 2
    torch.testing.assert_close(out, torch.cat([x[0, [0, 2]], x[1, [1, 2]]]).flatten())
    with pytest.raises(
        IRError, match="rows keep different counts \\(2 at index 0, 1 at index 1\\)"
    ):
        run(g, {"x": x, "keep": torch.tensor([[1, 0, 1, 0], [0, 0, 1, 0]], dtype=torch.bool)})


def test_verifier_wants_fresh_symbols():
    b = GraphBuilder("g")
    x = b.input("x", TensorType((sym("batch"), sym("seq"), 3), "f32"))
    k1 = b.input("k1", TensorType((sym("batch"), sym("seq")), "bool"))
    k2 = b.input("k2", TensorType((sym("batch"), sym("seq")), "bool"))
    a = b.emit("gather_rows", x, k1, length="seq")  # an input's symbol
    c = b.emit("gather_rows", x, k1, length="kept")
    d = b.emit("gather_rows", x, k1, length="kept")  # same mask: fine
    e = b.emit("gather_rows", x, k2, length="kept")  # another mask: not
    b.output(a, c, d, e)
    errs = check(b.finish())
    assert [e.split(":")[0] for e in errs] == [
        "[symbols] %0 = gather_rows",
        "[symbols] %3 = gather_rows",
    ]
    assert "bound by a graph input" in errs[0] and "from another mask" in errs[1]


def test_pruned_graph_follows_abi_v2():
    g = toy_lm(layers=3, prune=(1, LO, HI))
    verify(g)
    lm = InterpLM(g)
    assert lm.abi.version == "llmc-lm-v2" and not lm.abi.uniform
    assert lm.abi.past == (sym("past_0"), sym("past_1"), sym("past_2"))
    assert lm.abi.rows == (sym("seq"), sym("keep_1"), sym("keep_1"))
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    logits, past = lm.forward(ids, torch.arange(6)[None], lm.empty_past(1))
    assert logits.shape == (1, 4, 300)  # the dropped tokens have no logits
    assert kv_lengths(past) == [6, 4, 4]


def test_positions_travel_with_kept_rows():
    """Pruning before layer 0 equals the unpruned model run on the kept tokens at their original
    positions (RoPE reads positions, not row numbers): same weights (same seed)."""
    pruned, dense = toy_lm(layers=2, prune=(0, LO, HI)), toy_lm(layers=2)
    ids = torch.tensor([[5, 6, 7, 8, 9, 10, 11]])
    pos = torch.arange(7)[None]
    got = run(pruned, [ids, pos, *_empty(2)])
    kept = torch.tensor([p < LO or p >= HI for p in range(7)])
    want = run(dense, [ids[:, kept], pos[:, kept], *_empty(2)])
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b)
    # and not what the rows would give at renumbered positions 0..4
    wrong = run(dense, [ids[:, kept], torch.arange(5)[None], *_empty(2)])
    assert not torch.allclose(got[0], wrong[0])


@pytest.mark.parametrize("layer", [0, 1, 2])
def test_decode_on_per_layer_cache_equals_full_recompute(layer):
    """KV consistency: prefill prunes, decode appends one row per layer to caches of different
    lengths; each step's logits equal a full forward of the grown sequence (which prunes the
    same tokens, the mask being a function of position)."""
    g = toy_lm(layers=3, prune=(layer, LO, HI))
    lm = InterpLM(g)
    seq = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6, 5, 3]])
    prompt = 5
    _, past = lm.forward(seq[:, :prompt], torch.arange(prompt)[None], lm.empty_past(1))
    for t in range(prompt, seq.shape[1]):
        step, past = lm.forward(seq[:, t : t + 1], torch.tensor([[t]]), past)
        full = lm.logits(seq[:, : t + 1])
        torch.testing.assert_close(step[0, -1], full[0, -1], rtol=1e-5, atol=1e-5)
        dropped = HI - LO
        assert kv_lengths(past) == [t + 1 if i < layer else t + 1 - dropped for i in range(3)]


def test_generate_and_evaluate_on_pruned_model():
    g = toy_lm(layers=3, prune=(1, LO, HI))
    lm = InterpLM(g)
    res = generate(lm, [7, 8, 9, 10], 3)
    seq = [7, 8, 9, 10]
    for tok in res.tokens:  # greedy: each token is the argmax of a full forward of the prefix
        assert tok == int(lm.logits(torch.tensor([seq]))[0, -1].argmax())
        seq.append(tok)
    windows = torch.randint(0, 300, (2, 9), generator=torch.Generator().manual_seed(0))
    with pytest.raises(LlmcError, match="logits for 7 of 9 tokens .* prompt=N"):
        evaluate(lm, windows)
    q = evaluate(lm, windows, prompt=6, reference=InterpLM(toy_lm(layers=3)))
    assert q.tokens == 2 * 3 and 0 <= q.agreement <= 1 and q.perplexity > 1


def test_continuation_scoring_equals_teacher_forcing_without_pruning():
    lm = InterpLM(toy_lm(layers=2))
    windows = torch.randint(0, 300, (2, 10), generator=torch.Generator().manual_seed(1))
    cont = evaluate(lm, windows, prompt=4)
    logits = lm.logits(windows)[:, 3:-1].float()
    nll = -torch.log_softmax(logits, -1).gather(-1, windows[:, 4:, None]).mean()
    assert cont.tokens == 2 * 6
    assert abs(cont.nll - float(nll)) < 1e-5


def test_uniform_model_refuses_ragged_cache():
    lm = InterpLM(toy_lm(layers=2))
    past = [(torch.zeros(1, 2, 3, 8),) * 2, (torch.zeros(1, 2, 2, 8),) * 2]
    with pytest.raises(LMAbiError, match="layers 0 and 1 hold 3 and 2 positions"):
        lm.forward(torch.tensor([[1]]), torch.tensor([[3]]), past)


def test_fpga_refuses_in_one_line(tmp_path):
    """A gather_rows outside token-prune's scoring steps (the fixture's position mask) has no
    FlightLLM lowering: refused at compile time, in one line, writing nothing."""
    from llmc.errors import UnsupportedOpError
    from tests.backends.conftest import compile_graph

    match = r"op 'gather_rows' \(%\d+ at model.layers.1.prune\) has no FlightLLM"
    with pytest.raises(UnsupportedOpError, match=match) as e:
        compile_graph(toy_lm(layers=2, prune=(1, LO, HI)), "u280", tmp_path / "out")
    assert "\n" not in str(e.value) and not (tmp_path / "out").exists()


def test_cpu_artifact_keeps_per_layer_lengths(tmp_path):
    """A gather_rows whose mask is not keep_rows' (the fixture's position test) compiles for the
    CPU with a run-time row count in prefill and decode; the artifact's caches have the
    interpreter's per-layer lengths and it generates what the interpreter generates."""
    from llmc.runtime.tvm_runner import load
    from tests.backends.conftest import compile_graph

    g = toy_lm(layers=3, prune=(1, LO, HI))
    cpu, ref = load(compile_graph(g, "cpu", tmp_path / "out")), InterpLM(g)
    assert cpu.backend["kv_cache"]["per_layer"]
    ids = torch.tensor([[5, 17, 42, 9, 77, 3]])
    pos = torch.arange(6)[None]
    got, got_kv = cpu.forward(ids, pos, cpu.empty_past(1))
    want, want_kv = ref.forward(ids, pos, ref.empty_past(1))
    assert kv_lengths(got_kv) == kv_lengths(want_kv) == [6, 4, 4]
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert generate(cpu, [5, 17, 42, 9], 6).tokens == generate(ref, [5, 17, 42, 9], 6).tokens


def test_cost_analysis_takes_per_layer_symbols():
    from llmc.analysis import graph_cost

    g = toy_lm(layers=3, prune=(1, LO, HI))
    dense = graph_cost(toy_lm(layers=3), {"batch": 1, "seq": 8, "past": 4}).total
    full = graph_cost(g, {"batch": 1, "seq": 8, "past": 4}).total  # nothing pruned: upper bound
    pruned = graph_cost(g, {"batch": 1, "seq": 8, "past": 4, "keep_1": 4}).total
    assert pruned.flops < full.flops and abs(full.flops - dense.flops) / dense.flops < 0.01


def test_pruned_graph_round_trips_through_text():
    from llmc.ir import parse_graph, print_graph
    from llmc.ir.compare import graph_diff, graph_equal

    g = toy_lm(layers=2, prune=(1, LO, HI))
    back = parse_graph(print_graph(g))
    assert graph_equal(back, g), graph_diff(back, g)
    assert '{length = "keep_1"}' in print_graph(g)


def test_calibration_inputs_and_layerwise_run_on_pruned_graph():
    from llmc.passes.base import PassContext
    from llmc.passes.calibration import lm_inputs, run_layerwise

    g = toy_lm(layers=3, prune=(1, LO, HI))
    ids = torch.randint(0, 300, (2, 8), generator=torch.Generator().manual_seed(3))
    inputs = lm_inputs(g, ids)
    assert inputs["past_k_2"].shape == (2, 2, 0, 8)
    downs = [n for n in g.nodes if n.op == "linear" and "down_proj" in n.inputs[1].name]
    seen = {}

    def apply(seg, stats):
        for st in stats.values():
            seen[seg.label] = st.tokens

    ctx = PassContext(calib_inputs=[inputs])
    run_layerwise(g, ctx, downs, apply)
    assert seen == {"layers.0": 16, "layers.1": 12, "layers.2": 12}  # 2 x 8, then 2 x 6 kept


def test_a_call_that_keeps_no_token_is_refused():
    lm = InterpLM(toy_lm(layers=2, prune=(1, 0, 100)))  # drops every position below 100
    with pytest.raises(LlmcError, match="kept none of the 3 new tokens"):
        lm.forward(torch.tensor([[1, 2, 3]]), torch.arange(3)[None], lm.empty_past(1))
