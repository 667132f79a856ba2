"""The ``moe`` op (llmc.ir.ops_moe): reference semantics against a dense formula, validation,
text form, cost, and the CPU lowering against the reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from llmc.errors import IRError
from llmc.ir import GraphBuilder, TensorType, parse_graph, print_graph, sym
from llmc.ir.ops_moe import MoeAttrs, _moe_ref
from llmc.ir.registry import get_op

E, H, INTER = 4, 16, 12


def _weights(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    router = torch.randn(E, H, generator=gen)
    gate_up = torch.randn(E, 2 * INTER, H, generator=gen) * 0.3
    down = torch.randn(E, H, INTER, generator=gen) * 0.3
    return router, gate_up, down


def _dense(x, router, gate_up, down, k, normalize):
    """Every expert on every row, weighted by its routing weight (zero when not chosen)."""
    x2 = x.reshape(-1, H)
    p = torch.softmax(x2 @ router.T, -1)
    v, i = p.topk(k, -1)
    if normalize:
        v = v / v.sum(-1, keepdim=True)
    w = torch.zeros_like(p).scatter(-1, i, v)
    out = 0
    for e in range(E):
        g, u = (x2 @ gate_up[e].T).chunk(2, -1)
        out = out + w[:, e : e + 1] * ((F.silu(g) * u) @ down[e].T)
    return out.reshape(x.shape)


@pytest.mark.parametrize("k,normalize", [(1, True), (2, True), (2, False), (4, False)])
def test_reference_equals_the_dense_formula(k, normalize):
    x = torch.randn(2, 5, H, generator=torch.Generator().manual_seed(1))
    w = _weights()
    got = _moe_ref([x, *w], MoeAttrs(k, normalize), None)
    torch.testing.assert_close(got, _dense(x, *w, k, normalize), rtol=1e-5, atol=1e-5)


def _graph(k: int = 2, normalize: bool = True):
    b = GraphBuilder("moe")
    x = b.input("x", TensorType((sym("batch"), sym("seq"), H), "f32"))
    r = b.input("router", TensorType((E, H), "f32"))
    gu = b.input("gate_up", TensorType((E, 2 * INTER, H), "f32"))
    dn = b.input("down", TensorType((E, H, INTER), "f32"))
    with b.scope("model.layers.0.mlp", "ffn"):
        y = b.emit("moe", x, r, gu, dn, top_k=k, normalize=normalize)
    b.output(y)
    g = b.finish()
    g.meta = {"num_layers": 0}
    return g


def test_validation_text_form_and_cost():
    with pytest.raises(IRError, match="top_k"):
        MoeAttrs(top_k=0)
    with pytest.raises(IRError, match="activation"):
        MoeAttrs(activation="tanh")
    with pytest.raises(IRError, match="exceeds"):
        _graph(k=5)
    text = print_graph(_graph(k=1, normalize=False))
    assert "moe(%x, %router, %gate_up, %down) {top_k = 1, normalize = false}" in text
    assert print_graph(parse_graph(text)) == text
    op = get_op("moe")
    ins = [TensorType((1, 1, H), "f32"), TensorType((E, H), "f32"),
           TensorType((E, 2 * INTER, H), "f32"), TensorType((E, H, INTER), "f32")]  # fmt: skip
    nb = [4.0 * H, 4.0 * E * H, 4.0 * E * 2 * INTER * H, 4.0 * E * H * INTER]
    decode = op.cost(ins, ins[0], MoeAttrs(2), nb)
    # one row reads the router and 2 of the 4 experts' weights
    assert decode.bytes_read == nb[0] + nb[1] + 0.5 * (nb[2] + nb[3])
    per_expert = 2.0 * H * 2 * INTER + 2.0 * INTER * H + 4.0 * INTER + 2.0 * H
    assert decode.flops == 2.0 * H * E + 5.0 * E + 2 * per_expert
    prefill = op.cost([TensorType((1, 64, H), "f32"), *ins[1:]], ins[0], MoeAttrs(2), nb)
    assert prefill.bytes_read == sum(nb)  # 64 rows touch every expert


@pytest.mark.parametrize("k,normalize", [(2, True), (1, False)])
def test_cpu_lowering_matches_reference(k, normalize):
    import tvm
    from tvm.runtime.vm import VirtualMachine

    from llmc.backends import pipeline_for
    from llmc.targets import get_target

    t = get_target("cpu")
    ex, lowered, _ = pipeline_for(t).compile(_graph(k, normalize), t)
    assert lowered.rules_used.get("moe.dense")
    fn = VirtualMachine(ex, tvm.cpu())["prefill"]
    w = _weights(3)
    for rows in (1, 7):
        x = torch.randn(1, rows, H, generator=torch.Generator().manual_seed(rows))
        want = _moe_ref([x, *w], MoeAttrs(k, normalize), None)
        out = fn(*[tvm.runtime.tensor(t.numpy()) for t in (x, *w)])
        out = out[0] if not hasattr(out, "numpy") else out
        torch.testing.assert_close(torch.from_numpy(out.numpy()), want, rtol=1e-5, atol=1e-5)


def _param_graph(w, k: int, normalize: bool, activation: str = "silu"):
    """The moe op with its router and experts as params (what the frontends produce)."""
    b = GraphBuilder("moe")
    x = b.input("x", TensorType((sym("batch"), sym("seq"), H), "f32"))
    with b.scope("model.layers.0.mlp", "ffn"):
        r, gu, dn = (
            b.param(f"model.layers.0.mlp.{nm}", t)
            for nm, t in zip(("router", "gate_up", "down"), w)
        )
        y = b.emit("moe", x, r, gu, dn, top_k=k, normalize=normalize, activation=activation)
    b.output(y)
    g = b.finish()
    g.meta = {"num_layers": 0}
    return g


@pytest.mark.parametrize(
    "k,normalize,act",
    [(1, True, "silu"), (2, True, "silu"), (2, False, "gelu"), (4, False, "silu")],
)
def test_cpu_routed_lowering_matches_reference(k, normalize, act):
    """Expert weights that are params take the routed rule (``cpu.moe.routed``): decode (one
    static row, one pair per chosen expert) and prefill (rows grouped by expert, register
    blocks with a partial tail) both equal the reference."""
    import tvm
    from tvm.runtime.vm import VirtualMachine

    from llmc.backends import pipeline_for
    from llmc.targets import get_target

    t = get_target("cpu")
    w = _weights(5)
    g = _param_graph(w, k, normalize, act)
    ex, lowered, _ = pipeline_for(t).compile(g, t)
    assert lowered.rules_used.get("cpu.moe.routed") and not lowered.rules_used.get("moe.dense")
    vm = VirtualMachine(ex, tvm.cpu())
    from llmc.backends.layouts import get_layout
    from llmc.backends.vm_plan import workspace_args

    wargs = {wa.name: wa for wa in lowered.weights}
    params = g.root().params

    def weights(entry):
        was = [wargs[nm] for nm in lowered.entry_weights[entry]]
        return [
            tvm.runtime.tensor(get_layout(wa.layout).transform(params[wa.param], "f32").numpy())
            for wa in was
        ]

    for entry, rows in (("decode", 1), ("prefill", 1), ("prefill", 9), ("prefill", 40)):
        x = torch.randn(1, rows, H, generator=torch.Generator().manual_seed(rows + k))
        want = _moe_ref([x, *w], MoeAttrs(k, normalize, act), None)
        ws = workspace_args(vm, lowered.workspaces, entry)
        out = vm[entry](tvm.runtime.tensor(x.numpy()), *weights(entry), *ws)
        out = out[0] if not hasattr(out, "numpy") else out
        torch.testing.assert_close(torch.from_numpy(out.numpy()), want, rtol=1e-5, atol=1e-5)
