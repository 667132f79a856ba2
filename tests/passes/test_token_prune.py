"""token-prune: the keep mask's rules, golden IR, keep=1 is the dense model, the KV cache after a
pruned prefill is what each layer kept (decode equals an independent recomputation), the reported
fractions, and one-line errors for bad options."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from llmc.cli import main
from llmc.errors import PassError
from llmc.ir import GraphBuilder, TensorType, print_graph, sym, verify
from llmc.ir.ops_adaptive import KeepRowsAttrs, keep_count, keep_rows, position_hash
from llmc.ir.structure import check_lm_abi
from llmc.passes import PassContext, build_pipeline
from llmc.passes.token_prune import schedule, solve_floor
from llmc.runtime.interp import Interpreter
from llmc.runtime.lm import InterpLM, evaluate, generate, kv_lengths
from tests.lm_fixtures import toy_lm

# tiny is read and traced once for the file (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("tiny_loads_cached")


def _pruned(spec: str, layers: int = 4, **kw: object) -> InterpLM:
    g = toy_lm(layers=layers, **kw)
    g.meta["layer_prefix"] = "model.layers"
    build_pipeline(spec).run(g, _ctx(g))
    verify(g)
    return InterpLM(g)


def _ctx(g: object) -> PassContext:
    ids = torch.randint(0, 300, (2, 40), generator=torch.Generator().manual_seed(1))
    pos = torch.arange(40)[None].expand(2, 40)
    past = {f"past_{k}_{i}": torch.zeros(2, 2, 0, 8) for i in range(8) for k in "kv"}
    return PassContext(calib_inputs=[{"input_ids": ids, "positions": pos, **past}])


# ---------------------------------------------------------------------------- the keep mask


def test_keep_rows_forced_rows_and_ties():
    s = torch.tensor([[0.0, 0.5, 0.5, 0.9, 0.1, 0.2, 0.3, 0.0]])
    pos = torch.arange(8)[None]
    got = keep_rows(s, pos, KeepRowsAttrs(keep=0.5, recent=2), 8)
    # sink (0), last two (6, 7), then the best: 3 (0.9); ties 1 and 2 (0.5) were not needed
    assert got.tolist() == [[True, False, False, True, False, False, True, True]]
    got = keep_rows(s, pos, KeepRowsAttrs(keep=0.625, recent=2), 8)
    assert got.tolist() == [[True, True, False, True, False, False, True, True]]  # tie -> row 1
    # no sink: position 0 is an ordinary row
    got = keep_rows(s, pos, KeepRowsAttrs(keep=0.5, recent=2, sink=False), 8)
    assert got.tolist() == [[False, True, False, True, False, False, True, True]]


def test_keep_rows_uniform_and_threshold():
    pos = torch.arange(12)[None]
    s = torch.zeros(1, 12)
    got = keep_rows(s, pos, KeepRowsAttrs(keep=0.5, recent=1, method="uniform"), 12)
    # forced 0 and 11; 4 more evenly spaced among rows 1..10: picks (i + .5) * 10 / 4
    assert got[0].nonzero().flatten().tolist() == [0, 2, 4, 7, 9, 11]
    s = torch.tensor([[1.0, 9, 1, 1, 8, 1, 1, 1, 1, 1, 1, 1]])
    got = keep_rows(s, pos, KeepRowsAttrs(keep=0.01, recent=1, method="threshold", theta=2.0), 12)
    assert got[0].nonzero().flatten().tolist() == [0, 1, 4, 11]  # above 2x the mean, + forced


def test_keep_rows_same_count_per_batch_row():
    g = torch.Generator().manual_seed(0)
    s = torch.rand(3, 20, generator=g)
    pos = torch.arange(20)[None].expand(3, 20)
    for method in ("topk", "uniform", "threshold"):
        m = keep_rows(s, pos, KeepRowsAttrs(keep=0.3, recent=3, method=method, theta=1.2), 20)
        counts = m.sum(-1)
        assert (counts == counts[0]).all() and int(counts[0]) >= keep_count(0.3, 20)


def test_keep_count_rounds_half_up():
    assert [keep_count(0.5, n) for n in (1, 2, 3, 1024)] == [1, 1, 2, 512]
    assert keep_count(0.3, 10) == 3 and keep_count(1.0, 7) == 7


def test_position_hash_is_a_fixed_random_order():
    a = position_hash(torch.arange(1000), 0)
    assert a.min() >= 0 and a.max() < 1 and len(set(a.tolist())) > 990
    assert torch.equal(a, position_hash(torch.arange(1000), 0))
    assert not torch.equal(a, position_hash(torch.arange(1000), 1))
    # not a lattice: neighbours are uncorrelated
    d = torch.corrcoef(torch.stack([a[:-1], a[1:]]))[0, 1]
    assert abs(float(d)) < 0.1


# ---------------------------------------------------------------------------- the schedule


def test_schedule_and_floor():
    assert schedule(8, 2, 4, 0.4) == pytest.approx([1, 1, 0.8, 0.6, 0.4, 0.4, 0.4, 0.4])
    f = solve_floor(8, 2, 4, 0.5)
    assert sum(schedule(8, 2, 4, f)) / 8 == pytest.approx(0.5)
    assert solve_floor(8, 6, 7, 0.3) is None  # 6 full layers of 8 average more than 0.3


# ---------------------------------------------------------------------------- golden IR


def test_token_prune_golden():
    lm = _pruned("token-prune:keep=0.5:l1=1:l2=1", layers=2)
    text = print_graph(lm.graph)
    prune = [
        ln.strip()
        for ln in text.splitlines()
        if "#prune" in ln or "input %past" in ln or "%35 = rope" in ln
    ]
    assert prune == [
        "input %past_k_0 : f32[batch, 2, past_0, 8]",
        "input %past_v_0 : f32[batch, 2, past_0, 8]",
        "input %past_k_1 : f32[batch, 2, past_1, 8]",
        "input %past_v_1 : f32[batch, 2, past_1, 8]",
        "%50 = token_scores(%11, %present_k_0, %positions) : f32[batch, seq] "
        "@model.layers.1.prune #prune",
        '%51 = keep_rows(%50, %positions) {keep = 0.5, total = "seq"} : bool[batch, seq] '
        "@model.layers.1.prune #prune",
        '%52 = gather_rows(%24, %51) {length = "keep_1"} : f32[batch, keep_1, 32] '
        "@model.layers.1.prune #prune",
        '%53 = gather_rows(%positions, %51) {length = "keep_1"} : i64[batch, keep_1] '
        "@model.layers.1.prune #prune",
        # layer 1 reads the kept rows and their original positions
        "%35 = rope(%30, %53) : f32[batch, 4, keep_1, 8] @model.layers.1.self_attn #attn",
    ]
    assert lm.abi.version == "llmc-lm-v2"
    assert lm.abi.rows == (sym("seq"), sym("keep_1"))
    assert (
        "%present_k_1 = concat(%past_k_1, %36) {dim = 2} : f32[batch, 2, keep_1 + past_1, 8]"
        in text
    )


# ---------------------------------------------------------------------------- exactness


def test_keep_one_is_the_dense_model():
    dense = InterpLM(toy_lm(layers=3))
    lm = _pruned("token-prune:keep=1.0:l1=1:l2=2", layers=3)
    ids = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12, 13]])
    pos = torch.arange(9)[None]
    a, pa = dense.forward(ids, pos, dense.empty_past(1))
    b, pb = lm.forward(ids, pos, lm.empty_past(1))
    assert torch.equal(a, b)
    assert kv_lengths(pb) == [9, 9, 9]
    r1 = generate(dense, list(range(3, 40)), 12)
    r2 = generate(lm, list(range(3, 40)), 12)
    assert r1.tokens == r2.tokens and r2.prefill_token_fraction == 1.0


def _recompute(lm: InterpLM, kept: dict[int, list[int]], tokens: list[int]) -> torch.Tensor:
    """Independent of the cache: one forward over every token, each keep_rows node replaced by
    a fixed mask (the positions that layer kept in prefill, plus every later token). Returns the
    last row's logits."""
    g = lm.graph.copy()
    masks = [n for n in g.nodes if n.op == "keep_rows"]
    feeds: dict[str, torch.Tensor] = {}
    for n in masks:
        layer = int(n.scope.split(".")[2])
        name = f"fixed_{layer}"
        v = g.add_input(name, TensorType((sym("batch"), n.out.type.shape[1]), "bool"))
        g.replace_uses(n.out, v)
        feeds[name] = layer
    g.dce()
    ids = torch.tensor([tokens])
    pos = torch.arange(len(tokens))[None]
    # rows entering each prune point: what the previous one kept (positions ascending)
    rows = list(range(len(tokens)))
    order = sorted(feeds.items(), key=lambda x: x[1])
    inputs: dict[str, torch.Tensor] = {"input_ids": ids, "positions": pos}
    for i in range(lm.abi.num_layers):
        inputs[f"past_k_{i}"] = torch.zeros(1, 2, 0, 8)
        inputs[f"past_v_{i}"] = torch.zeros(1, 2, 0, 8)
    for name, layer in order:
        keep = set(kept[layer]) | set(range(max(kept[layer]) + 1, len(tokens)))
        inputs[name] = torch.tensor([[r in keep for r in rows]])
        rows = [r for r in rows if r in keep]
    out = Interpreter(g).run(inputs)
    return out[0][0, -1]


@pytest.mark.parametrize(
    "spec",
    [
        "token-prune:keep=0.5:l1=1:l2=2",
        "token-prune:keep=0.3:l1=1:l2=3:score=pagerank",
        "token-prune:keep=0.4:l1=2:l2=2:score=uniform",
        "token-prune:average=0.6:score=random:recent=2",
        "token-prune:keep=0.4:adaptive=true:l1=1:l2=3",
    ],
)
def test_decode_after_pruned_prefill_equals_recomputation(spec):
    """KV consistency (LazyLLM): decode attends, per layer, to exactly what that layer kept."""
    lm = _pruned(spec)
    prompt = [(i * 37 + 11) % 300 for i in range(30)]
    kept: dict[int, list[int]] = {}

    def hook(n, ins, out):
        if n.op == "gather_rows" and n.out.type.dtype == "i64":
            kept[int(n.scope.split(".")[2])] = out[0].tolist()

    interp = Interpreter(lm.graph, hook=hook)
    feeds = {"input_ids": torch.tensor([prompt]), "positions": torch.arange(30)[None]}
    feeds.update({f"past_{k}_{i}": torch.zeros(1, 2, 0, 8) for i in range(4) for k in "kv"})
    interp.run(feeds)
    assert kept and all(0 in v and 29 in v for v in kept.values())  # sink and last token
    # prefill, then decode three tokens against the per-layer cache
    logits, past = lm.forward(torch.tensor([prompt]), torch.arange(30)[None], lm.empty_past(1))
    lengths = kv_lengths(past)
    for layer, rows in kept.items():
        assert lengths[layer] == len(rows)
    toks = list(prompt)
    for _ in range(3):
        nxt = int(logits[0, -1].argmax())
        toks.append(nxt)
        logits, past = lm.forward(torch.tensor([[nxt]]), torch.tensor([[len(toks) - 1]]), past)
        want = _recompute(lm, kept, toks)
        torch.testing.assert_close(logits[0, -1], want, rtol=1e-5, atol=1e-5)
    assert kv_lengths(past) == [n + 3 for n in lengths]


# ---------------------------------------------------------------------------- fractions


@settings(max_examples=12, deadline=None)
@given(
    n=st.integers(6, 40),
    keep=st.sampled_from([0.2, 0.35, 0.5, 0.75]),
    recent=st.integers(1, 5),
    score=st.sampled_from(["attention", "pagerank", "uniform", "random"]),
)
def test_kept_counts_follow_the_schedule(n, keep, recent, score):
    lm = _LMS.get((keep, recent, score))
    if lm is None:
        lm = _LMS[(keep, recent, score)] = _pruned(
            f"token-prune:keep={keep}:l1=1:l2=3:recent={recent}:score={score}"
        )
    ids = torch.tensor([[(i * 7 + 1) % 300 for i in range(n)]])
    _, past = lm.forward(ids, torch.arange(n)[None], lm.empty_past(1))
    frac = schedule(4, 1, 3, keep)
    forced = min(n, recent + 1) if n > recent else n
    want = []
    prev = n
    for layer in range(4):
        c = prev if layer == 0 else min(prev, max(forced, keep_count(frac[layer], n)))
        want.append(c)
        prev = c
    assert kv_lengths(past) == want


_LMS: dict[tuple[float, int, str], InterpLM] = {}


def test_eval_and_bench_report_prune_fields(capsys):
    assert main(["eval", "tiny", "--passes", "token-prune:keep=0.5", "--max-tokens", "600",
                 "--json"]) == 0  # fmt: skip
    import json

    out = json.loads(capsys.readouterr().out)
    # tiny: 4 layers, l1=1, l2=2 -> schedule 1, 0.75, 0.5, 0.5
    assert out["prompt_len"] == 192
    assert out["prefill_token_fraction"] == pytest.approx((192 + 144 + 96 + 96) / (4 * 192))
    assert 0.5 < out["prefill_flops_ratio"] < 0.75
    assert out["passes"] == "token-prune:keep=0.5"


def test_evaluate_scores_the_continuation():
    lm = _pruned("token-prune:keep=0.5:l1=1:l2=2")
    windows = torch.randint(0, 300, (2, 24), generator=torch.Generator().manual_seed(3))
    q = evaluate(lm, windows, prompt=16)
    assert q.tokens == 2 * 8 and q.prefill_token_fraction == pytest.approx((16 + 12 + 8 + 8) / 64)


# ---------------------------------------------------------------------------- bad options


@pytest.mark.parametrize(
    "spec, match",
    [
        ("token-prune:keep=0", "keep must be in \\(0, 1\\]"),
        ("token-prune:keep=1.5", "keep must be in \\(0, 1\\]"),
        ("token-prune:average=0", "average must be in"),
        ("token-prune:keep=0.5:average=0.5", "give keep or average, not both"),
        ("token-prune:l1=3:l2=2", "l2=2 must be >= l1=3"),
        ("token-prune:l1=0", "l1 must be >= 1"),
        ("token-prune:l1=4", "l1=4 must be below the model's 4 layers"),
        ("token-prune:score=entropy", "score must be one of"),
        ("token-prune:recent=0", "recent must be >= 1"),
        ("token-prune:average=0.1:l1=3:l2=3", "average=0.1 is not reachable"),
        ("token-prune:score=random:adaptive=true", "has none to threshold"),
    ],
)
def test_bad_options_are_one_line(spec, match):
    g = toy_lm(layers=4)
    with pytest.raises(PassError, match=match) as e:
        build_pipeline(spec).run(g, _ctx(g))
    assert "\n" not in str(e.value)


def test_refusals_in_one_line():
    g = toy_lm(layers=2)
    build_pipeline("token-prune:keep=0.5").run(g, _ctx(g))
    with pytest.raises(PassError, match="already prunes tokens"):
        build_pipeline("token-prune:keep=0.5").run(g, _ctx(g))
    b = GraphBuilder("x")
    b.output(b.input("x", TensorType((2,), "f32")))
    with pytest.raises(PassError, match="LM ABI"):
        build_pipeline("token-prune").run(b.finish(), PassContext())


def test_sliding_window_models_are_refused():
    g = toy_lm(layers=2)
    for n in g.nodes:
        if n.op == "attention":
            import dataclasses

            n.attrs = dataclasses.replace(n.attrs, window=16)
    with pytest.raises(PassError, match="sliding-window attention \\(window 16\\)"):
        build_pipeline("token-prune").run(g, _ctx(g))


def test_cli_refuses_a_target_without_lowering(tmp_path, capsys):
    # u280 runs token-prune (tests/fpga/test_token_prune.py), but not its adaptive thresholds
    rc = main(["compile", "tiny", "--target", "u280", "--passes",
               "token-prune:keep=0.5:adaptive=true", "-o", str(tmp_path / "o")])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and len(err) == 1 and "token-prune" in err[0]
    assert not (tmp_path / "o").exists()


def test_abi_check_passes_after_pruning():
    lm = _pruned("token-prune:keep=0.5")
    abi = check_lm_abi(lm.graph)
    assert abi.past == tuple(sym(f"past_{i}") for i in range(4))


def test_adaptive_thresholds_hit_the_budget_per_prompt():
    """Closed-loop calibration: each point's threshold is fitted on the rows the earlier points
    let through, so a held-out prompt pruned alone keeps about the average asked for."""
    from llmc.data import eval_windows
    from llmc.frontends import load_model
    from llmc.runtime.lm import InterpLM, evaluate

    g = load_model("tiny").graph
    build_pipeline("token-prune:average=0.5:adaptive=true").run(
        g, PassContext(calib_samples=4, calib_seqlen=96)
    )
    q = evaluate(InterpLM(g), eval_windows(112)[:4], batch_size=1, prompt=96)
    assert abs(q.prefill_token_fraction - 0.5) < 0.05, q.prefill_token_fraction


def test_after_ffn_skip_the_fpga_refuses_in_one_line():
    """Both passes together run on the TVM targets (tests/backends/test_token_prune_tvm.py); the
    FlightLLM model's segmented prefill does not carry ffn-skip's masks: one line at compile time."""
    from llmc.frontends import load_model
    from llmc.passes import PipelineError

    g = load_model("tiny").graph
    with pytest.raises(PipelineError, match="after ffn-skip is not supported on u280 yet") as e:
        build_pipeline("ffn-skip:threshold=0.9,token-prune:keep=0.5").run(
            g, PassContext(target="u280")
        )
    assert "\n" not in str(e.value)
