"""FFN-skip on the FlightLLM model: the predicated branch (BR) against the interpreter, the HLS
C simulation bit for bit, the cycle model charging executed blocks only, ``--skip-rate``."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from llmc.fpga import isa
from llmc.fpga.arch import load_arch
from llmc.fpga.funcsim import FuncRunner
from llmc.fpga.program import build_program
from llmc.runtime.lm import InterpLM

# As in test_funcsim: 157 prompt tokens span two prefill chunks (the second padded); the decode
# steps cross the decode bucket boundary at 160.
PROMPT = np.frombuffer(
    b"def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n" * 3, dtype=np.uint8
)[:157]
SMALL = ["buffers.weight_kb=128"]


@functools.lru_cache(maxsize=4)
def _skip_graph(recipe: str, spec: str):
    from llmc.passes import build_pipeline
    from llmc.passes.base import PassContext
    from tests.fpga.conftest import _tiny

    g = _tiny(recipe).copy()
    build_pipeline(spec).run(g, PassContext(target="u280"))
    return g


def _decode_both(g, prog, prompt, steps, decode_start):
    """Prefill + greedy decode on the simulator and the interpreter (the interpreter's tokens);
    returns the worst logit difference and both runs' skip decisions per step."""
    r = FuncRunner(prog)
    r.decode_start = decode_start
    lm = InterpLM(g)
    lm.decode_start = decode_start
    n = len(prompt)
    ref, past = lm.forward(
        torch.tensor(prompt.astype(np.int64))[None], torch.arange(n)[None], lm.empty_past(1)
    )
    err = float(np.abs(r.prefill(prompt) - ref[0].numpy()).max())
    tok = int(ref[0, -1].argmax())
    interp_skips, sim_skips = [], []
    prefix = g.meta["layer_prefix"]
    from llmc.ir.structure import layer_of

    for step in range(steps):
        ref, past = lm.forward(torch.tensor([[tok]]), torch.tensor([[n + step]]), past)
        out = r.decode(tok)
        err = max(err, float(np.abs(out - ref[0, 0].numpy()).max()))
        interp_skips.append([i for i, s in enumerate(lm.last_skips[0, 0].tolist()) if s])
        stage, bucket, taken = r.trace[-1]
        instrs = prog.stream(stage, bucket).instrs
        sim_skips.append(sorted(layer_of(instrs[j].tag, prefix) for j in taken))
        tok = int(ref[0, -1].argmax())
    return err, interp_skips, sim_skips, r, lm


@pytest.mark.parametrize("recipe", ["int4-8of16", "int8-4of16"])
def test_skipping_decode_matches_interpreter(tiny_graph, recipe):
    tiny_graph("dense")
    g = _skip_graph(recipe, "ffn-skip:threshold=0.5:warmup=1")
    prog = build_program(g, load_arch("u280", SMALL))
    err, want, got, r, lm = _decode_both(g, prog, PROMPT, 5, decode_start=len(PROMPT))
    assert got == want, (got, want)
    assert any(want), "the threshold should make some decode steps skip"
    assert err < 1e-4, err
    assert r.skip_stats() == lm.skip_stats()
    assert r.skip_stats()["ffn_skip_fraction"] > 0


def test_dense_run_takes_no_branch(tiny_graph):
    tiny_graph("dense")
    g = _skip_graph("int4-8of16", "ffn-skip:threshold=0.5:warmup=1")
    prog = build_program(g, load_arch("u280", SMALL))
    err, want, got, r, _ = _decode_both(g, prog, PROMPT[:20], 3, decode_start=None)
    assert got == want == [[], [], []] and err < 1e-4
    assert r.skip_stats()["ffn_decode_rows"] == 0


def test_rows_take_their_own_decision_in_a_window(tiny_graph):
    """Teacher-forced window (eval): rows past decode_start + warmup may be saturated while the
    prompt's rows run the block, so the branch is not taken and the per-row select decides."""
    tiny_graph("dense")
    g = _skip_graph("int4-8of16", "ffn-skip:threshold=0.5:warmup=1")
    prog = build_program(g, load_arch("u280", SMALL))
    r = FuncRunner(prog)
    r.decode_start = 20
    lm = InterpLM(g)
    lm.decode_start = 20
    ids = PROMPT[:40]
    ref = lm.logits(torch.tensor(ids.astype(np.int64))[None])[0].numpy()
    got = r.prefill(ids)
    assert lm.last_skips[0, 21:].any() and not lm.last_skips[0, :20].any()
    assert r.trace[-1][2] == []  # the chunk has rows that run the block: no branch taken
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)


def test_branch_body_is_fenced(tiny_graph):
    """BR skips to a SYNC; no dependency token crosses either (the tokens check holds on every
    path), and the body is the FFN block's instructions."""
    tiny_graph("dense")
    g = _skip_graph("int4-8of16", "ffn-skip:threshold=0.5:warmup=1")
    prog = build_program(g, load_arch("u280", SMALL))
    instrs = prog.stream("decode", 160).instrs
    brs = [j for j, i in enumerate(instrs) if i.op == isa.BR]
    assert len(brs) == len(g.meta["ffn_skip"]["skippable"])
    isa.check_tokens(instrs)
    skipped = list(instrs)
    for j in reversed(brs):
        k = instrs[j].f["skip"]
        assert instrs[j + 1 + k].op == isa.SYNC and not instrs[j + 1 + k].f.get("end")
        assert any(i.op == isa.MV for i in instrs[j + 1 : j + 1 + k])
        del skipped[j + 1 : j + 1 + k]
    isa.check_tokens(skipped)
    # encode / decode round trip keeps the branch
    raw = isa.encode_stream(instrs)
    back = isa.decode_stream(raw)
    assert [(i.op, i.f.get("skip", 0)) for i in back] == [
        (i.op, i.f.get("skip", 0)) for i in instrs
    ]
