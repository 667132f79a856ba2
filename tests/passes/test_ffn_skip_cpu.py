"""An ffn-skip graph compiled for the CPU (its ``cond`` is a Relax ``If``; the TVM runner passes
the LM-ABI input ``decode_start``) generates what the interpreter generates."""

from __future__ import annotations

import torch

from llmc.compile import Loaded, compile_model
from llmc.passes import PassContext, build_pipeline
from llmc.runtime.lm import InterpLM, generate
from tests.lm_fixtures import toy_lm


def test_cpu_artifact_skips_as_the_interpreter(tmp_path) -> None:
    from llmc.runtime.tvm_runner import load

    g = toy_lm(layers=4, vocab=256)
    build_pipeline("ffn-skip:ratio=0.3").run(g, PassContext(calib_samples=4, calib_seqlen=64))
    compile_model(Loaded(g, None, "toy", "tests"), target="cpu", out=tmp_path / "skip")
    cpu, ref = load(tmp_path / "skip"), InterpLM(g)
    prompt = list(b"def f(x):\n    return ")
    want = generate(ref, prompt, 24)
    assert 0 < ref.skip_stats()["ffn_skip_fraction"]  # the run really skipped
    assert generate(cpu, prompt, 24).tokens == want.tokens
    assert cpu.decode_start is None  # generate restores it
    # the artifact counts skips from its ffn_skipped output as the interpreter does
    assert cpu.skip_stats() == ref.skip_stats()
    # one forward in which rows skip: the artifact's logits are the interpreter's skipping ones,
    # not the dense model's
    ids = torch.tensor([prompt * 3])
    cpu.decode_start = ref.decode_start = 0
    got, skipped = cpu.logits(ids), ref.logits(ids)
    assert ref.last_skips.any() and torch.equal(cpu.last_skips, ref.last_skips)
    torch.testing.assert_close(got, skipped, atol=1e-4, rtol=1e-4)
    ref.decode_start = None
    assert not torch.allclose(got, ref.logits(ids), atol=1e-3)
