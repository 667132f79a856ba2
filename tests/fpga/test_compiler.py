"""Instruction compiler: formats read from the IR, stream structure, buckets, storage, errors."""

from __future__ import annotations

import math
from collections import Counter

import pytest

from llmc.errors import LlmcError, UnsupportedOpError
from llmc.fpga import isa
from llmc.fpga.arch import ArchError, load_arch
from llmc.fpga.lower import lower_stream
from llmc.fpga.program import CapacityError, build_program
from llmc.fpga.sim import instruction_storage

MIXED = "mixed"


def test_formats_come_from_the_ir(tiny_graph, u280_small):
    g = tiny_graph(MIXED)
    prog = build_program(g, u280_small)
    fmts = {name: lin.fmt.describe() for name, lin in prog.linears.items()}
    assert fmts["model.layers.0.mlp.down_proj.weight"] == "int8 4:16 g0"
    assert fmts["model.layers.2.self_attn.o_proj.weight"] == "int4 4:16 g64"
    assert fmts["lm_head.weight"] == "f32"  # left dense by the passes
    for lin in prog.linears.values():
        assert sum(t.rows for t in lin.tiles) == lin.n
        assert all(t.nbytes <= 128 * 1024 // 2 for t in lin.tiles)
    # int4 8:16 with 4-bit indices takes the same bytes as dense int4; 4:16 takes half
    q = prog.linears["model.layers.0.self_attn.q_proj.weight"]
    assert q.region.size < 256 * 256 // 2


def test_stream_structure(tiny_graph, u280_small):
    prog = build_program(tiny_graph(MIXED), u280_small)
    dec = prog.stream("decode", 32)
    pre = prog.stream("prefill", 0)
    cd, cp = Counter(i.op for i in dec.instrs), Counter(i.op for i in pre.instrs)
    assert cd[isa.MM] == 0 and cd[isa.MV] > 0, "decode runs matrix-vector only"
    assert cp[isa.MV] == 0 and cp[isa.MM] > 0, "a prefill chunk runs matrix-matrix"
    assert dec.instrs[-1].op == isa.SYNC and dec.instrs[-1].f["end"] == 1
    # SiLU into gate, product into up, both residual adds: 4 per layer
    assert dec.fused == 4 * 4
    fused = Counter(i.f.get("fuse", 0) for i in dec.instrs if i.op == isa.MV)
    assert fused[isa.F_SILU] and fused[isa.F_MUL] and fused[isa.F_ADD]
    # no standalone SiLU / mul / add left in the SFU stream
    sfu = Counter(isa.SFU_NAMES[i.f["func"]] for i in dec.instrs if i.op == isa.SFU)
    assert not {"silu", "mul", "add"} & set(sfu)
    assert sfu["rmsnorm"] == 2 * 4 + 1 and sfu["softmax"] == 4 and sfu["rope"] == 2 * 4
    for s in (dec, pre):
        isa.check_tokens(s.instrs)
        assert len(s.encode()) == isa.INSTR_BYTES * len(s.instrs)


def test_decode_keeps_activations_on_chip(tiny_graph, u280_small):
    prog = build_program(tiny_graph(MIXED), u280_small)
    dec = prog.stream("decode", 64)
    # HBM traffic of a decode step: weights, K/V blocks, embedding/rope rows, norm vectors,
    # the new K/V rows and the logits -- no activation round trips.
    stores = [i for i in dec.instrs if i.op == isa.ST]
    kv = [i for i in stores if i.tag.endswith("self_attn")]
    logits = [i for i in stores if i.tag == "output logits"]
    assert len(kv) == 2 * 4 and len(stores) == len(kv) + len(logits)  # K and V rows per layer
    # the logits stream out as lm_head produces them: one store per weight tile
    assert len(logits) == len(prog.linears["lm_head.weight"].tiles) > 1
    loads = Counter(i.f.get("buf") for i in dec.instrs if i.op == isa.LD)
    assert loads[isa.B_ACT] == 1 + 2 + 2 * 4 + 1  # embedding, cos/sin, norm vectors, final norm


def test_length_buckets(tiny_graph, u280_small):
    prog = build_program(tiny_graph(MIXED), u280_small)
    a = prog.arch
    assert prog.decode_bucket(1) == 16 and prog.decode_bucket(17) == 32
    assert prog.prefill_chunks(1) == 1 and prog.prefill_chunks(129) == 2
    assert prog.stream("decode", 32) is prog.stream("decode", 32)  # one stream per bucket
    with pytest.raises(LlmcError, match="max_tokens"):
        prog.decode_bucket(a.max_tokens + 1)
    # attention covers the bucket: decode stream T loads ceil(T / 64) K blocks per layer
    for t in (16, 64, 80):
        kv_loads = [
            i for i in prog.stream("decode", t).instrs if i.op == isa.LD and i.f["buf"] == isa.B_KV
        ]
        assert len(kv_loads) == 2 * 4 * math.ceil(t / 64)


def test_instruction_storage(tiny_graph):
    arch = load_arch("u280", ["max_tokens=512"])
    prog = build_program(tiny_graph(MIXED), arch)
    st = instruction_storage(prog)
    assert st["streams_bucketed"] == 512 // 128 + 512 // 16
    assert st["unbucketed_bytes"] > 20 * st["bucketed_bytes"]
    # the affine decode count is exact on every bucket
    assert st["decode_count_method"].startswith("affine")
    chunks = st["prefill_chunk_instructions"]
    total = sum(chunks) + sum(
        len(lower_stream(prog, "decode", t, deps=False).instrs) for t in range(16, 513, 16)
    )
    assert st["bucketed_bytes"] == total * isa.INSTR_BYTES


def test_buffers_too_small_name_the_field(tiny_graph):
    g = tiny_graph(MIXED)
    with pytest.raises(ArchError, match=r"'buffers.weight_kb'.*down_proj"):
        build_program(g, load_arch("u280", ["buffers.weight_kb=32"]))
    prog = build_program(g, load_arch("u280", ["buffers.act_kb=64"]))
    with pytest.raises(ArchError, match=r"'buffers.act_kb' = 64 is too small: prefill"):
        prog.stream("prefill", 0)


def test_model_too_large_reports_numbers():
    from llmc.frontends import zoo

    g = zoo.build("llama2-7b")  # dense f16: 12.6 GiB of weights
    with pytest.raises(
        CapacityError, match=r"weights need 12\.\d+ GiB.*8\.00 GiB HBM \+ 0\.00 GiB DDR"
    ):
        build_program(g, load_arch("u280", ["ddr.capacity_gb=0"]))
    prog = build_program(g, load_arch("u280"))  # spills to DDR instead
    assert prog.hw_bytes("weight", "ddr") > 4 * 2**30


def test_unsupported_graph_input_is_refused(u280_small):
    import torch

    from llmc.ir import GraphBuilder, TensorType, sym

    b = GraphBuilder("mlp")
    x = b.input("x", TensorType((sym("batch"), sym("seq"), 16), "f32"))
    w = b.param("w", torch.randn(16, 16))
    b.output(b.emit("linear", x, w))
    with pytest.raises(UnsupportedOpError, match="neither token ids/positions nor a KV cache"):
        build_program(b.finish(), u280_small)
