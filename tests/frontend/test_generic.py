"""``file.py:factory`` specs and generic modules."""

from __future__ import annotations

import textwrap

import pytest
import torch

from llmc.errors import ModelLoadError
from llmc.frontends import load_model
from llmc.ir import parse_graph, print_graph, verify
from llmc.runtime.interp import run

FACTORY = textwrap.dedent(
    """
    import torch

    class RMS(torch.nn.Module):
        def __init__(self, d):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.rand(d) + 0.5)

        def forward(self, x):
            v = x.pow(2).mean(-1, keepdim=True)
            return x * torch.rsqrt(v + 1e-6) * self.weight

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(50, 16)
            self.norm = RMS(16)
            self.mlp = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 16))
            self.head = torch.nn.Linear(16, 50, bias=False)

        def forward(self, ids):
            h = self.emb(ids)
            h = h + self.mlp(self.norm(h))
            return torch.softmax(self.head(h), dim=-1)

    def make():
        torch.manual_seed(0)
        return Tiny().eval(), (torch.randint(0, 50, (2, 5)),)

    def module_only():
        return Tiny()

    def not_a_module():
        return 42

    def hf():
        import transformers
        cfg = transformers.GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=2, n_positions=32)
        return transformers.GPT2LMHeadModel(cfg)
    """
)


@pytest.fixture()
def factory_file(tmp_path):
    p = tmp_path / "mymodel.py"
    p.write_text(FACTORY)
    return p


def test_factory_module_with_example(factory_file):
    m = load_model(f"{factory_file}:make")
    g = m.graph
    verify(g)
    assert m.name == "make" and m.source.endswith("mymodel.py:make")
    assert [v.name for v in g.inputs] == ["ids"] and [v.name for v in g.outputs] == ["output"]
    ops = {n.op for n in g.nodes}
    assert {"embedding", "linear", "gelu", "softmax", "rms_norm"} <= ops
    assert not ops & {"rsqrt", "pow", "reduce_mean"}  # the written-out RMSNorm is one op
    assert g.find("rms_norm")[0].scope == "norm"
    assert "mlp.0.weight" in g.params
    assert print_graph(parse_graph(print_graph(g))) == print_graph(g)
    torch.manual_seed(0)
    import importlib.util

    spec = importlib.util.spec_from_file_location("mm_check", factory_file)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    net, (ids,) = mod.make()
    with torch.no_grad():
        want = net(ids)
    (got,) = run(g, [ids])
    assert torch.allclose(got, want, atol=1e-6)


def test_factory_hf_model_goes_through_hf_path(factory_file):
    g = load_model(f"{factory_file}:hf").graph
    assert g.meta["abi"] == "llmc-lm-v1" and g.meta["family"] == "gpt2"
    assert [v.name for v in g.outputs][:2] == ["logits", "present_k_0"]


@pytest.mark.parametrize(
    "fn, match",
    [
        ("module_only", "needs example inputs"),
        ("not_a_module", "not a torch.nn.Module"),
        ("missing", "has no function 'missing'"),
    ],
)
def test_factory_errors(factory_file, fn, match):
    with pytest.raises(ModelLoadError, match=match):
        load_model(f"{factory_file}:{fn}")


def test_factory_missing_file(tmp_path):
    with pytest.raises(ModelLoadError, match="no such file"):
        load_model(f"{tmp_path}/nope.py:make")
