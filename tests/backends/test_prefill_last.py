"""Generation's prefill computes the head for the last row only (llmc.ir.lastrow): the last-row
variant's logits are the last row of the all-rows graph's, its caches the same, on the
interpreter (dense, token-pruned and cond-skipping toy LMs) and in the CPU artifact's
``prefill_last`` entry; greedy tokens are identical with and without it; an artifact without the
entry (compiled before it) falls back to slicing."""

from __future__ import annotations

import pytest
import torch

from llmc.ir import print_graph, verify
from llmc.ir.lastrow import head_nodes, last_row_graph
from llmc.runtime.lm import InterpLM, LanguageModel, generate
from tests.backends.cond_lm import cond_lm
from tests.backends.test_codegen_golden import small_graph
from tests.lm_fixtures import toy_lm

PROMPT = [(i * 7 + 3) % 300 for i in range(20)]


class _Sliced(LanguageModel):
    """``lm`` with the default forward_last: every row computed, the last one kept."""

    def __init__(self, lm: LanguageModel) -> None:
        self.lm, self.meta = lm, lm.meta

    def forward(self, input_ids, positions, past):
        return self.lm.forward(input_ids, positions, past)


def _inputs(lm: LanguageModel, batch: int = 2, seq: int = 11):
    ids = torch.randint(0, 300, (batch, seq), generator=torch.Generator().manual_seed(3))
    return ids, torch.arange(seq).expand(batch, seq), lm.empty_past(batch)


@pytest.mark.parametrize(
    "make",
    [
        lambda: toy_lm(),
        lambda: toy_lm(layers=3, prune=(1, 2, 6)),  # llmc-lm-v2: later layers see fewer rows
        lambda: cond_lm("cos", threshold=0.5),  # each layer's FFN in a cond
    ],
    ids=["dense", "pruned", "cond"],
)
def test_interpreter_last_row_equals_last_row_of_all(make):
    g = make()
    before = print_graph(g)
    g1 = last_row_graph(g)
    assert g1 is not None and print_graph(g) == before  # the original is not edited
    verify(g1)
    assert g1.outputs[0].type.shape[1] == 1 and g1.outputs[1:] == g.outputs[1:]
    lm, lm1 = InterpLM(g), InterpLM(g1)
    ids, pos, past = _inputs(lm)
    full, present = lm.forward(ids, pos, past)
    last, present1 = lm1.forward(ids, pos, past)
    assert last.shape == (2, 1, full.shape[2])
    torch.testing.assert_close(last, full[:, -1:], atol=1e-5, rtol=1e-5)
    for (k, v), (k1, v1) in zip(present, present1):
        assert torch.equal(k, k1) and torch.equal(v, v1)
    via, _ = lm.forward_last(ids, pos, past)  # InterpLM builds and runs the variant itself
    assert torch.equal(via, last)


def test_head_is_the_norm_and_lm_head():
    g = toy_lm()
    cut, nodes = head_nodes(g)
    assert [n.op for n in nodes] == ["rms_norm", "linear"]
    assert cut.node.op == "add" and cut.type.shape[1] == g.outputs[0].type.shape[1]
    assert last_row_graph(last_row_graph(g)) is not None


def test_no_variant_without_a_row_wise_head():
    assert last_row_graph(small_graph()) is None  # not an LM graph
    g = toy_lm()
    g.outputs.append(g.outputs[0].node.inputs[0])  # the final norm's output is also returned
    assert head_nodes(g)[1][-1].op == "linear"  # the norm stays outside the head


@pytest.mark.parametrize("prune", [None, (1, 2, 6)])
def test_generated_tokens_identical(prune):
    lm = InterpLM(toy_lm(layers=3, prune=prune))
    a, b = generate(lm, PROMPT, 8), generate(_Sliced(lm), PROMPT, 8)
    assert a.tokens == b.tokens and a.kv_after_prefill == b.kv_after_prefill


def test_cpu_artifact_prefill_last(toy_graph, toy_runner):
    backend = toy_runner.backend
    assert backend["functions"] == ["prefill", "prefill_last", "decode"]
    assert backend["entry_logits"] == {"prefill": "all", "prefill_last": "last", "decode": "all"}
    # prefill_last calls the prefill's layer function: no second copy of the layers
    assert backend["layer_functions"] == {"prefill_layer": 4, "decode_layer": 2}
    ids, pos, past = _inputs(toy_runner)
    full = toy_runner.forward(ids, pos, past)[0].clone()
    assert toy_runner._entry(2, 11, last=True) == "prefill_last"
    last, present = toy_runner.forward_last(ids, pos, past)
    assert last.shape == (2, 1, 300)
    torch.testing.assert_close(last, full[:, -1:], atol=1e-5, rtol=1e-5)
    want, want_present = InterpLM(toy_graph).forward_last(ids, pos, past)
    torch.testing.assert_close(last, want, atol=1e-4, rtol=1e-4)
    for (k, v), (wk, wv) in zip(present, want_present):
        torch.testing.assert_close(torch.as_tensor(k), wk, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(torch.as_tensor(v), wv, atol=1e-4, rtol=1e-4)
    a = generate(toy_runner, PROMPT, 8)
    assert a.tokens == generate(_Sliced(toy_runner), PROMPT, 8).tokens
    assert a.tokens == generate(InterpLM(toy_graph), PROMPT, 8).tokens


def test_artifact_without_the_entry_slices(toy_runner, monkeypatch):
    """An artifact compiled before prefill_last has no ``entry_logits``: forward_last runs the
    all-rows prefill and slices."""
    old = {k: v for k, v in toy_runner.backend.items() if k != "entry_logits"}
    old["entries"] = {k: v for k, v in old["entries"].items() if k != "prefill_last"}
    monkeypatch.setattr(toy_runner, "backend", old)
    assert toy_runner._entry(2, 11, last=True) == "prefill"
    assert toy_runner._entry(1, 1, last=True) == "decode"
    ids, pos, past = _inputs(toy_runner)
    full = toy_runner.forward(ids, pos, past)[0].clone()
    last, _ = toy_runner.forward_last(ids, pos, past)
    assert torch.equal(last, full[:, -1:])


@pytest.mark.parametrize(
    "name, ops",
    [
        ("gpt2", ["layer_norm", "linear"]),  # tied head
        ("gemma-2-2b", ["rms_norm", "linear", "div", "tanh", "mul"]),  # logit soft-cap
    ],
)
def test_zoo_heads(name, ops):
    from llmc.frontends import zoo

    g = zoo.build(name)
    assert [n.op for n in head_nodes(g)[1]] == ops
    g1 = last_row_graph(g)
    verify(g1)
    assert g1.outputs[0].type.shape[1] == 1
