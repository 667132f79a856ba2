"""Differential tests of the CPU backend against the reference interpreter (the oracle)."""

from __future__ import annotations

import torch

from tests.backends.conftest import interp_run


def _flat(past):
    return [t for kv in past for t in kv]


def test_prefill_and_decode_match_interpreter(toy_graph, toy_runner):
    torch.manual_seed(0)
    b, s = 2, 7
    ids = torch.randint(0, 300, (b, s))
    pos = torch.arange(s).expand(b, s).contiguous()
    past = toy_runner.empty_past(b)
    logits, present = toy_runner.forward(ids, pos, past)
    ref = interp_run(toy_graph, [ids, pos, *_flat(past)])
    torch.testing.assert_close(logits, ref[0], rtol=1e-4, atol=1e-4)
    for got, want in zip(_flat(present), ref[1:]):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    # three decode steps on top of the cache, each compared with the interpreter's own cache
    ref_past = ref[1:]
    for step in range(3):
        ids1 = torch.randint(0, 300, (b, 1))
        pos1 = torch.full((b, 1), s + step)
        logits, present = toy_runner.forward(ids1, pos1, present)
        ref = interp_run(toy_graph, [ids1, pos1, *ref_past])
        ref_past = ref[1:]
        torch.testing.assert_close(logits, ref[0], rtol=1e-4, atol=1e-4)
    assert present[0][0].shape == (b, 2, s + 3, 8)


def test_prefill_after_cache_matches_full_forward(toy_runner):
    """Chunked prefill (a second prompt chunk on top of a cache) equals one full forward."""
    ids = torch.randint(0, 300, (1, 12))
    full, _ = toy_runner.forward(ids, torch.arange(12)[None], toy_runner.empty_past(1))
    _, past = toy_runner.forward(ids[:, :5], torch.arange(5)[None], toy_runner.empty_past(1))
    tail, _ = toy_runner.forward(ids[:, 5:], torch.arange(5, 12)[None], past)
    torch.testing.assert_close(tail, full[:, 5:], rtol=1e-4, atol=1e-4)


def test_layers_outlined_once(toy_cpu):
    from llmc.runtime.tvm_runner import read_backend

    backend = read_backend(toy_cpu)
    # prefill_last (generation's prefill) calls the prefill's layer function
    assert backend["layer_functions"] == {"prefill_layer": 4, "decode_layer": 2}
    # one GEMM kernel per distinct weight shape, whatever the number of layers
    gemms = [k for k in backend["kernels"] if k.startswith("panel_gemm")]
    assert len(gemms) == len(set(gemms)) <= 10  # 5 shapes x (prefill, decode)


def test_generate_greedy_matches_interpreter(toy_graph, toy_runner):
    from llmc.runtime.lm import InterpLM, generate

    prompt = [5, 17, 42, 99]
    got = generate(toy_runner, prompt, 8).tokens
    want = generate(InterpLM(toy_graph), prompt, 8).tokens
    assert got == want


def test_stateful_prefill_decode(toy_runner):
    first = toy_runner.prefill([1, 2, 3])
    nxt = toy_runner.decode(int(first.argmax()))
    assert nxt.shape == (300,)
    assert torch.isfinite(nxt).all()


def test_decode_entry_used_for_single_token(toy_graph, toy_runner):
    """batch = seq = 1 runs the specialised ``decode`` function; it matches the interpreter."""
    assert toy_runner._entry(1, 1) == "decode" and toy_runner._entry(2, 1) == "prefill"
    ids = torch.randint(0, 300, (1, 6))
    pos = torch.arange(6)[None]
    _, past = toy_runner.forward(ids, pos, toy_runner.empty_past(1))
    one = torch.tensor([[7]])
    got, _ = toy_runner.forward(one, torch.tensor([[6]]), past)
    ref = interp_run(toy_graph, [one, torch.tensor([[6]]), *_flat(past)])
    torch.testing.assert_close(got, ref[0], rtol=1e-4, atol=1e-4)


def test_gelu_tanh_fast_matches_torch():
    """The CPU's tanh GELU uses TOPI's rational fast_tanh: within 1e-6 of torch's, saturating
    correctly far from zero."""
    import tvm
    from tvm.runtime.vm import VirtualMachine

    from llmc.backends import pipeline_for
    from llmc.ir import GraphBuilder, TensorType, sym
    from llmc.targets import get_target

    b = GraphBuilder("g")
    x = b.input("x", TensorType((sym("n"), 64), "f32"))
    b.output(b.emit("gelu", x, approximate="tanh"))
    g = b.finish()
    g.meta = {"num_layers": 0}
    t = get_target("cpu")
    ex, lowered, _ = pipeline_for(t).compile(g, t)
    assert lowered.rules_used.get("gelu.fast_tanh", 0) >= 1
    fn = VirtualMachine(ex, tvm.cpu())["prefill"]
    xs = torch.linspace(-30, 30, 64 * 50).reshape(50, 64)
    got = torch.from_numpy(fn(tvm.runtime.tensor(xs.numpy()))[0].numpy())
    want = torch.nn.functional.gelu(xs, approximate="tanh")
    torch.testing.assert_close(got, want, rtol=1e-5, atol=2e-6)
