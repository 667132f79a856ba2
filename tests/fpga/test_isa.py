"""Instruction encoding and dependency bits."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmc.fpga import isa
from llmc.fpga.isa import Instr
from tests.hypothesis_profiles import examples


@st.composite
def instrs(draw):
    op = draw(st.sampled_from(sorted(isa.FIELDS)))
    f = {}
    for name, bits in isa.FIELDS[op]:
        if name in ("op", "wait", "rel"):
            continue
        if draw(st.booleans()):
            f[name] = draw(st.integers(0, (1 << bits) - 1))
    ins = Instr(op, f)
    ins.wait = draw(st.integers(0, 15))
    ins.rel = draw(st.integers(0, 15))
    return ins


@settings(max_examples=examples(5), deadline=None)
@given(instrs())
def test_encode_decode_round_trip(ins):
    raw = isa.encode(ins)
    assert len(raw) == isa.INSTR_BYTES
    back = isa.decode(raw)
    assert back.op == ins.op and back.wait == ins.wait and back.rel == ins.rel
    assert {k: v for k, v in back.f.items() if v} == {k: v for k, v in ins.f.items() if v}


def test_field_overflow_is_refused():
    with pytest.raises(isa.IsaError, match=r"MV.nnz = 32 does not fit in 5 bits"):
        isa.encode(Instr(isa.MV, {"nnz": 32}))
    with pytest.raises(isa.IsaError, match="no field"):
        isa.encode(Instr(isa.SYNC, {"hbm": 1}))


def test_fields_fit_512_bits():
    for op, fields in isa.FIELDS.items():
        assert sum(b for _, b in fields) <= 512, isa.OP_NAMES[op]


def _ld(slot, tag=""):
    return Instr(isa.LD, {"buf": isa.B_WGT}, writes=[(isa.B_WGT, slot, slot + 10)], tag=tag)


def _mv(slot, out):
    return Instr(
        isa.MV,
        {},
        reads=[(isa.B_WGT, slot, slot + 10)],
        writes=[(isa.B_ACT, out, out + 4)],
    )


def test_double_buffering_dependencies():
    # LD0 LD1 MV0 LD2(slot 0: waits for MV0) MV1 MV2 ST(reads MV2's output)
    s = [_ld(0), _ld(100), _mv(0, 0), _ld(0), _mv(100, 8), _mv(0, 16)]
    s.append(Instr(isa.ST, {}, reads=[(isa.B_ACT, 16, 20)], writes=[(isa.HBM, 0, 4)]))
    s.append(Instr(isa.SYNC, {"end": 1}))
    isa.insert_dependencies(s)
    isa.check_tokens(s)
    L, M, S = 1 << isa.U_LOAD, 1 << isa.U_MPE, 1 << isa.U_STORE
    assert s[0].rel == M and s[2].wait == L  # MV0 needs LD0 (RAW)
    assert s[1].rel == M and s[4].wait == L  # MV1 needs LD1, not LD0
    assert s[2].rel == L and s[3].wait == M  # LD2 overwrites slot 0 after MV0 read it (WAR)
    assert s[3].rel == M and s[5].wait == L
    assert s[5].rel == S and s[6].wait == M  # the store waits for the last MV only


def test_check_tokens_finds_deadlock():
    a = Instr(isa.MV, {})
    a.wait = 1 << isa.U_LOAD
    with pytest.raises(isa.IsaError, match="deadlock"):
        isa.check_tokens([a])
    b = Instr(isa.LD, {})
    b.rel = 1 << isa.U_MPE
    with pytest.raises(isa.IsaError, match="never consumed"):
        isa.check_tokens([b])
