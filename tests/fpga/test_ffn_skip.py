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
from llmc.fpga.isa import Instr
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


def test_hls_csim_is_bit_exact_with_skipping(tiny_graph, tmp_path):
    """The emitted C++ runs BR, the int -> float load and the new SFU functions exactly as the
    functional simulator does: the whole HBM image after every stream, with branches taken."""
    from llmc.fpga.hls import HlsToolchainError, csim, emit_project, find_ap_types, find_cxx
    from llmc.fpga.hls_vectors import make_vectors

    try:
        find_cxx(), find_ap_types()
    except HlsToolchainError as e:
        pytest.skip(str(e))
    tiny_graph("dense")
    g = _skip_graph("int4-8of16", "ffn-skip:threshold=0.5:warmup=1")
    prog = build_program(g, load_arch("u280", SMALL))
    vec = make_vectors(prog, PROMPT, 5, decode_start=len(PROMPT))
    assert sum(len(t) for t in vec.taken) >= 4  # decode steps took branches
    assert not any(vec.taken[:2])  # the prefill chunks did not
    emit_project(prog, tmp_path / "hls", vectors=vec)
    res = csim(tmp_path / "hls", timeout=300, cache_dir=tmp_path / "builds")
    assert res.passed, f"{res.summary}\n{res.output[-3000:]}"
    for name, want in vec.expected.items():
        assert np.array_equal(res.logits[name].view(np.uint32), want.view(np.uint32)), name
    assert res.hbm is not None and np.array_equal(res.hbm, vec.hbm_final)


def test_new_unit_functions_and_branches_match_funcsim(tiny_graph, tmp_path):
    """A hand-made stream through the C simulation: every SFU function the skip test uses (on
    edge inputs: zeros of both signs, subnormals, huge values, negatives under sqrt), the
    per-row operand, the int -> float load of negative and large ints, and BR taken / not taken
    in both senses (a taken branch must leave its body's output untouched)."""
    from llmc.fpga.hls import HlsConfig, HlsToolchainError, csim, emit_project
    from llmc.fpga.hls import find_ap_types, find_cxx
    from llmc.fpga.hls_vectors import record_vectors
    from tests.fpga.test_hls import _UnitStream

    try:
        find_cxx(), find_ap_types()
    except HlsToolchainError as e:
        pytest.skip(str(e))
    u = _UnitStream(np.random.default_rng(3), 2048)  # ACT[0:8] = 0, -0, +-1e-40, +-90, +-1e30
    rows = (2, 3, 64)
    a = dict(a_addr=8, a_so=3 * 64, a_si=64)
    b = dict(b_addr=900, b_so=0, b_si=64)
    c = dict(c_addr=1300, c_so=64, c_si=0)
    u.sfu(isa.S_SQRT, *rows, **a)
    u.sfu(isa.S_SQRT, 1, 1, 8, a_addr=0)
    for fn in (isa.S_DIV, isa.S_GT, isa.S_GE, isa.S_LT, isa.S_LE):
        u.sfu(fn, *rows, **a, **b)
    for fn in (isa.S_MAXC, isa.S_RSUBC, isa.S_GTC, isa.S_GEC, isa.S_LTC, isa.S_LEC):
        u.sfu(fn, *rows, **a, fparam=isa.f32_bits(0.25))
    u.sfu(isa.S_GT, *rows, **a, **b)
    mask = u.instrs[-1].f["o_addr"]
    u.sfu(isa.S_SELECT, *rows, a_addr=mask, a_so=3 * 64, a_si=64, **b, **c)
    u.sfu(isa.S_SELECT, *rows, a_addr=0, a_so=3, a_si=1, **b, **c, flags=isa.SF_ROW_A)
    for fn in (isa.S_SUM, isa.S_MAX):
        u.sfu(fn, *rows, **a)
        u.sfu(fn, 1, 1, 12, a_addr=0)  # over the edge values: NaN-free, +-inf sums
    ints = np.array([0, -1, 7, -(2**31), 2**31 - 1, 2**24 + 1, 123456789, -5], dtype=np.int32)
    dst = u.alloc(len(ints))
    u.ld(isa.B_ACT, dst, ints.tobytes())
    u.instrs[-1].f["mode"] = isa.M_I2F
    # branches: ACT[0] = +0.0, ACT[1] = -0.0 (both "false"), ACT[2] = 1e-40 ("true")
    for addr, neg in ((0, 0), (1, 0), (2, 0), (0, 1), (2, 1)):
        u.instrs.append(Instr(isa.BR, {"addr": addr, "skip": 1, "neg": neg}))
        u.sfu(isa.S_MULC, 1, 1, 16, a_addr=8, fparam=isa.f32_bits(2.0))
        u.instrs.append(Instr(isa.SYNC, {"end": 0}))
    hbm, instrs = u.finish()
    tiny_graph("dense")
    prog = build_program(
        _skip_graph("int4-8of16", "ffn-skip:threshold=0.5:warmup=1"), load_arch("u280", SMALL)
    )
    k_max = HlsConfig.for_program(prog).k_max
    vec = record_vectors(prog.arch, hbm, [("unit", instrs, 0)], k_max)
    emit_project(prog, tmp_path / "hls", vectors=vec)
    res = csim(tmp_path / "hls", timeout=300, cache_dir=tmp_path / "builds")
    assert res.passed, f"{res.summary}\n{res.output[-3000:]}"
    assert np.array_equal(res.hbm, vec.hbm_final)
    st = instrs[-2].f
    out = vec.hbm_final[st["hbm"] : st["hbm"] + st["row_bytes"]].view(np.float32)
    np.testing.assert_array_equal(out[dst : dst + len(ints)], ints.astype(np.float32))
    # the five branch bodies: taken for (2, 0) and (0, 1) only -> three ran, two left zeros
    bodies = [i.f["o_addr"] for i in instrs if i.op == isa.SFU and i.f["func"] == isa.S_MULC]
    ran = [bool(out[o : o + 16].any()) for o in bodies]
    assert ran == [True, True, False, False, True]
