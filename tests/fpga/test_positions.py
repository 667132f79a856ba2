"""Integer values on the accelerator: token ids and positions reach the gathers (embedding and
RoPE rows) with their constant offset; every other use of them is refused at compile time.

Regression: OPT's learned positions are ``embedding(positions + 2, embed_positions)``. The
``add`` used to run on the SFU, which reads ``ACT``: it read the float words at the address the
positions had in ``IDX`` and wrote its result to ``ACT``, and the gather then read ``IDX`` at that
``ACT`` address, where nothing is written: row 0 for every token, offset dropped (logit error
0.66, greedy agreement 0.84 on a 21-token prompt and 4 decode steps).
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from llmc.errors import UnsupportedOpError
from llmc.fpga import isa
from llmc.fpga.arch import load_arch
from llmc.fpga.funcsim import FuncRunner
from llmc.fpga.lower import lower_stream
from llmc.fpga.program import build_program
from llmc.fpga.verify import compare_lm
from llmc.frontends.hf import from_hf_model
from llmc.ir.graph import Graph
from tests.frontend.hf_models import VOCAB, make

TABLE = "model.decoder.embed_positions.weight"  # [max_position_embeddings + 2, hidden]


@pytest.fixture(scope="module")
def opt():
    return from_hf_model(make("opt"), name="opt")


@pytest.fixture(scope="module")
def llama():
    return from_hf_model(make("llama"), name="llama")


def edited(g: Graph, old: str, new: str, count: int = 1) -> Graph:
    """``g`` with its printed text edited (params shared)."""
    text = str(g)
    assert text.count(old) == count, old
    h = g.copy()
    from llmc.ir.parser import parse_graph

    e = parse_graph(text.replace(old, new))
    e.params, e.meta = h.params, h.meta
    return e


def test_position_offset_moves_the_gather_base(opt):
    prog = build_program(opt, load_arch("u280"))
    table = prog.regions[f"t:{TABLE}"]
    row = 4 * int(opt.params[TABLE].type.shape[1])
    for stage, bucket in (("decode", 16), ("prefill", 0)):
        s = prog.stream(stage, bucket)
        gathers = [i for i in s.instrs if i.op == isa.LD and i.f.get("mode") == 1]
        hbm = {i.f["hbm"] for i in gathers}
        assert table.addr + 2 * row in hbm, (stage, table.addr, sorted(hbm))
        # the offset costs no instruction: nothing at the position embedding runs on the SFU
        assert not [i for i in s.instrs if i.op == isa.SFU and "embed_positions" in i.tag]


def test_opt_matches_the_interpreter(opt):
    ids = np.random.default_rng(3).integers(0, VOCAB, 13)
    ag, caches = compare_lm(opt, FuncRunner(build_program(opt, load_arch("u280"))), ids, 5)
    assert ag.within(k=4.0) and ag.argmax_agree == 1.0, ag
    assert caches["kv_err"] < 1e-5


def test_prefill_padding_rows_gather_inside_the_tables(opt):
    """The last prefill chunk's padding rows repeat the last position: OPT's table here has
    64 + 2 rows, a 128-token chunk would otherwise gather rows up to 129 for a 13-token prompt."""
    prog = build_program(opt, load_arch("u280"))
    r = FuncRunner(prog)
    r.prefill(np.arange(13) % VOCAB)
    reg = prog.regions["in:positions"]
    pos = r.hbm[reg.addr : reg.addr + 4 * prog.chunk].view(np.int32)
    assert pos[:13].tolist() == list(range(13)) and set(pos[13:].tolist()) == {12}


@pytest.mark.parametrize(
    "old, new, message",
    [
        # integer arithmetic other than a constant offset
        ("add(%positions, %1)", "mul(%positions, %1)", "reads the integer value %positions"),
        # a negative offset would gather below the table
        ("value = 2.0, dtype", "value = -3.0, dtype", "%positions - 3 can index below row 0"),
        # positions up to max_position_embeddings - 1 = 63, + 5 = 68: past the 66 rows
        (
            "value = 2.0, dtype",
            "value = 5.0, dtype",
            "%positions [+] 5 can reach row 68 of @model.decoder.embed_positions.weight, which has 66 rows",
        ),
        # a float constant added to the integer positions
        ('value = 2.0, dtype = "i64"', 'value = 2.5, dtype = "i64"', "integer constant"),
    ],
)
def test_other_integer_uses_are_refused(opt, old, new, message):
    g = edited(opt, old, new)
    with pytest.raises(UnsupportedOpError, match=message) as e:
        lower_stream(build_program(g, load_arch("u280")), "decode", 16)
    assert "\n" not in str(e.value)


def test_rope_position_offset_is_refused(llama):
    # positions + 1 into every rope: the cos/sin tables hold rows 0 .. max_tokens - 1 only
    first = str(llama).split("\n  %", 1)[1].split(" ", 1)[0]
    g = edited(
        llama,
        f"\n  %{first} =",
        '\n  %pc = constant() {value = 1.0, dtype = "i64"} : i64[]'
        "\n  %p1 = add(%positions, %pc) : i64[batch, seq]"
        f"\n  %{first} =",
    )
    g = edited(g, ", %positions)", ", %p1)", count=4)
    with pytest.raises(UnsupportedOpError, match="positions offset by 1 are not supported"):
        lower_stream(build_program(g, load_arch("u280")), "decode", 16)


def test_integer_cast_keeps_the_offset(opt):
    """A cast between integer types moves no data (IDX words are int32), so the gather still
    sees positions + 2; a cast to float is refused."""
    cast = '  %pi = cast(%positions) {dtype = "i32"} : i32[batch, seq]\n  %1 = constant()'
    g = edited(edited(opt, "  %1 = constant()", cast), "add(%positions, %1)", "add(%pi, %1)")
    ids = np.random.default_rng(3).integers(0, VOCAB, 5)
    ag, _ = compare_lm(g, FuncRunner(build_program(g, load_arch("u280"))), ids, 2)
    assert ag.within(k=4.0) and ag.argmax_agree == 1.0, ag
    bad = edited(edited(g, '{dtype = "i32"} : i32', '{dtype = "f32"} : f32'), "i64[] @", "f32[] @")
    with pytest.raises(UnsupportedOpError, match="cast %pi .*i64 -> f32 has no FlightLLM"):
        lower_stream(build_program(bad, load_arch("u280")), "decode", 16)


def test_compile_refuses_before_writing(opt, tmp_path):
    from llmc.compile import Loaded, compile_model

    g = edited(opt, "add(%positions, %1)", "mul(%positions, %1)")
    out = tmp_path / "out"
    with pytest.raises(UnsupportedOpError, match="mul %2 at model.decoder.embed_positions reads"):
        compile_model(Loaded(g, None, "opt", "opt"), target="u280", out=out)
    assert not out.exists() and not list(tmp_path.iterdir())


def test_offset_gather_on_the_hls_c_simulation(opt, tmp_path):
    """The emitted C++ machine runs OPT's streams (the moved gather base included) bit for bit
    like the functional simulator: every logit and the final HBM image, KV caches included."""
    from llmc.fpga.hls import HlsToolchainError, csim, emit_project, find_ap_types, find_cxx
    from llmc.fpga.hls_vectors import make_vectors

    try:
        find_cxx(), find_ap_types()
    except HlsToolchainError as e:
        if os.environ.get("LLMC_REQUIRE_TOOLCHAIN", "") not in ("", "0"):
            pytest.fail(f"toolchain required (LLMC_REQUIRE_TOOLCHAIN=1) but: {e}")
        pytest.skip(str(e))
    prog = build_program(opt, load_arch("u280", ["buffers.weight_kb=128"]))
    vec = make_vectors(prog, np.arange(13) % VOCAB, 3)
    emit_project(prog, tmp_path / "hls", vectors=vec)
    res = csim(tmp_path / "hls", timeout=300)
    assert res.passed and not res.mismatches, f"{res.summary}\n{res.output[-3000:]}"
    for name, want in vec.expected.items():
        assert np.array_equal(res.logits[name].view(np.uint32), want.view(np.uint32)), name
    assert res.hbm is not None and np.array_equal(res.hbm, vec.hbm_final)
