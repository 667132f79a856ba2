"""Export to a Hugging Face directory: transformers loads what llmc compressed, and computes
what the interpreter computes."""

from __future__ import annotations

import json

import pytest
import torch

from llmc.export_hf import ExportError, export_hf
from llmc.passes import PassContext, build_pipeline
from llmc.passes.calibration import lm_inputs
from llmc.runtime.interp import run


@pytest.fixture(scope="module")
def tiny():
    from llmc.frontends import load_model

    return load_model("tiny")


def hf_logits(out_dir, ids):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out_dir)
    model.eval()
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize(
    "spec",
    [
        "wanda:pattern=2:4:measure=false,rtn:bits=4:group=128:measure=false",
        "flap:ratio=0.25,smoothquant:alpha=0.5,w8a8:measure=false",
    ],
)
def test_round_trip_through_transformers(tiny, tmp_path, spec) -> None:
    g = tiny.graph.copy()
    ctx = PassContext(calib_samples=4, calib_seqlen=64)
    build_pipeline(spec).run(g, ctx)
    info = export_hf(g, tmp_path / "hf", tokenizer=tiny.tokenizer, config=tiny.config)
    files = sorted(p.name for p in (tmp_path / "hf").iterdir())
    assert "model.safetensors" in files and "llmc_compression.json" in files
    comp = json.loads((tmp_path / "hf" / "llmc_compression.json").read_text())
    # the pipeline is the one the graph recorded as its passes ran (canonical spec strings)
    assert comp["schema"] == "llmc-compression-v1"
    assert comp["pipeline"] == info["pipeline"] == build_pipeline(spec).spec()
    assert comp["pipeline"].startswith("wanda:pattern=2:4" if "wanda" in spec else "flap:")
    ids = torch.randint(0, 256, (1, 40), generator=torch.Generator().manual_seed(0))
    got = hf_logits(tmp_path / "hf", ids)
    if "w8a8" in spec:
        # transformers runs the float equivalent; llmc's qlinear_a8 also rounds activations
        assert len(comp["input_activations"]) == 29  # 28 layer linears + the head
        assert info["intermediate_size"] == 528
        fg = g.copy()
        for n in fg.nodes:
            if n.op == "qlinear_a8":
                n.op, n.attrs = "linear", None
        want = run(fg, lm_inputs(fg, ids))[0]
    else:
        w = comp["weights"]["model.layers.0.mlp.down_proj.weight"]
        assert w["quant"]["bits"] == 4 and w["quant"]["group"] == 64  # 704 inputs
        assert w["sparsity"] == {"pattern": "2:4", "density": 0.5}
        want = run(g, lm_inputs(g, ids))[0]
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_export_refuses_what_it_cannot_write(tiny, tmp_path) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(ExportError, match="not an empty directory"):
        export_hf(tiny.graph, tmp_path / "full")
    from tests.lm_fixtures import toy_lm

    with pytest.raises(ExportError, match="supports Llama-family graphs"):
        export_hf(toy_lm(), tmp_path / "toy")
    assert not (tmp_path / "toy").exists()
    with pytest.raises(ExportError, match="family 'toy-x' of graph .* is not supported"):
        g = toy_lm()
        g.meta["family"] = "toy-x"
        export_hf(g, tmp_path / "toy", config={"architectures": ["ToyForCausalLM"]})


TEXTS = [
    "hello world",
    "  leading and trailing spaces  ",
    "naïve café, résumé — ∑ 🙂 日本語",
    "tabs\tand\nnewlines\r\n",
    "\x00\x01\x7f control bytes",
    "",
]


def test_tiny_tokenizer_loads_in_transformers_and_encodes_as_llmc(tiny, tmp_path) -> None:
    from transformers import AutoTokenizer

    from llmc.tokenizer import ByteTokenizer, load_tokenizer

    assert isinstance(tiny.tokenizer, ByteTokenizer)
    export_hf(tiny.graph, tmp_path / "hf", tokenizer=tiny.tokenizer, config=tiny.config)
    assert (tmp_path / "hf" / "tokenizer_config.json").is_file()
    hf = AutoTokenizer.from_pretrained(tmp_path / "hf")
    again = load_tokenizer(tmp_path / "hf")  # llmc reads its own export back
    assert len(hf) == again.vocab_size == 256
    for s in TEXTS:
        want = tiny.tokenizer.encode(s)
        assert hf.encode(s, add_special_tokens=False) == want == again.encode(s), s
        assert hf.decode(want) == s
