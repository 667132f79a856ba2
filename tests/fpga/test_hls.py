"""HLS C++ emission: the g++ C simulation agrees bit for bit with the functional simulator.

The ladder: the functional simulator matches the interpreter on ``tiny`` (test_funcsim.py); here
the emitted accelerator, compiled with g++, runs the same streams on the same HBM image and must
produce the same HBM image word for word after every stream (the test bench checks it, and these
tests check its outputs again). Every program shares one build per arch (the model is data), kept
in a per-session cache.

Goldens: ``golden/hls_u280/`` holds the emitted sources for tiny on the u280; a change in a
template or in isa.py shows up as a diff. Run with ``LLMC_UPDATE_GOLDEN=1`` to accept it (review
the diff). Tests that need g++ or the hls4ml headers skip with the reason, except under
``make test`` (``LLMC_REQUIRE_TOOLCHAIN=1``), where they fail.
"""

from __future__ import annotations

import difflib
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from llmc.fpga import isa
from llmc.fpga import numerics as nm
from llmc.fpga.arch import load_arch
from llmc.fpga.hls import (
    CXXFLAGS,
    PROJECT_FILES,
    TEMPLATES,
    HlsConfig,
    HlsError,
    HlsToolchainError,
    Slots,
    csim,
    emit_project,
    find_ap_types,
    find_cxx,
    render,
)
from llmc.fpga.hls_vectors import check_stream, make_vectors, record_vectors
from llmc.fpga.isa import Instr
from llmc.fpga.layout import WeightFormat, tile_sections
from llmc.fpga.program import build_program

GOLDEN = Path(__file__).parent / "golden" / "hls_u280"
REQUIRED = os.environ.get("LLMC_REQUIRE_TOOLCHAIN", "") not in ("", "0")
RECIPES = ["int4-8of16", "int8-4of16", "int4-2of16-g88", "mixed"]

# As in test_funcsim: 157 prompt tokens span two prefill chunks (the second padded); 5 decode
# steps cross the decode bucket boundary at 160 (buckets 160, 160, 160, 176, 176).
PROMPT = np.frombuffer(
    b"def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n" * 3, dtype=np.uint8
)[:157]
DECODE_STEPS = 5


def _need(find):
    try:
        return find()
    except HlsToolchainError as e:
        if REQUIRED:
            pytest.fail(f"toolchain required (LLMC_REQUIRE_TOOLCHAIN=1) but: {e}")
        pytest.skip(str(e))


@pytest.fixture(scope="session")
def cxx() -> str:
    return _need(find_cxx)


@pytest.fixture(scope="session")
def toolchain(cxx):
    _need(find_ap_types)
    return cxx


@pytest.fixture(scope="session")
def build_cache(tmp_path_factory) -> Path:
    """One compiled C simulation per source hash, shared by the xdist workers of a run."""
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    base = tmp_path_factory.getbasetemp()
    return (base.parent / f"hls-builds-{run}") if run else base / "hls-builds"


@pytest.fixture(scope="session")
def hls_run(tiny_graph, u280_small, toolchain, build_cache, tmp_path_factory):
    """``hls_run(recipe)``: (program, vectors, emitted dir, csim result), once per recipe."""
    done: dict[str, tuple] = {}

    def run(recipe: str):
        if recipe not in done:
            prog = build_program(tiny_graph(recipe), u280_small)
            vec = make_vectors(prog, PROMPT, DECODE_STEPS)
            out = tmp_path_factory.mktemp(f"hls-{recipe}")
            emit_project(prog, out, vectors=vec)
            done[recipe] = (prog, vec, out, csim(out, timeout=300, cache_dir=build_cache))
        return done[recipe]

    return run


# ----------------------------------------------------------------------------------------------
# the C simulation against the functional simulator on tiny


@pytest.mark.parametrize("recipe", RECIPES)
def test_csim_matches_funcsim_bit_for_bit(hls_run, recipe):
    prog, vec, _, res = hls_run(recipe)
    assert res.passed, f"{res.summary}\n{res.output[-3000:]}"
    assert res.returncode == 0 and res.summary.startswith("PASS") and not res.mismatches
    # the run covers both prefill chunks and both decode buckets
    names = [vec.streams[s.stream][0] for s in vec.steps]
    assert names == ["prefill_0", "prefill_1"] + ["decode_160"] * 3 + ["decode_176"] * 2
    # the logits the C++ wrote, compared here again as uint32 words
    assert (
        set(res.logits)
        == set(vec.expected)
        == {"prefill"} | {f"decode_{i}" for i in range(DECODE_STEPS)}
    )
    assert res.logits["prefill"].shape == (PROMPT.size, 256)
    for name, want in vec.expected.items():
        got = res.logits[name]
        assert np.array_equal(got.view(np.uint32), want.view(np.uint32)), name
        assert np.isfinite(got).all()
    # the whole final image, KV caches included
    assert res.hbm is not None and np.array_equal(res.hbm, vec.hbm_final)
    for name in prog.cache_inputs:
        reg = prog.regions[f"kv:{name}"]
        kv = slice(reg.addr, reg.addr + reg.size)
        assert np.array_equal(res.hbm[kv], vec.hbm_final[kv]), name
        assert np.any(vec.hbm_final[kv] != vec.hbm_init[kv]), f"{name} was never written"


def test_corrupted_expected_vector_fails(hls_run, build_cache, tmp_path):
    _, vec, out, _ = hls_run("int4-8of16")
    bad = tmp_path / "bad"
    shutil.copytree(out, bad, ignore=shutil.ignore_patterns("csim_out", "build"))
    # flip one bit of the first expected HBM change of step 3 (a decode step)
    lines = (bad / "vectors" / "manifest.txt").read_text().splitlines()
    steps = [i for i, ln in enumerate(lines) if ln.startswith("step ")]
    exp = next(ln for ln in lines[steps[3] :] if ln.startswith("expect "))
    addr, nbytes, off = (int(x) for x in exp.split()[1:])
    j = (-addr) % 4  # the first whole word of the change
    assert j + 4 <= nbytes
    blob = bytearray((bad / "vectors" / "patches.bin").read_bytes())
    blob[off + j] ^= 0x01
    (bad / "vectors" / "patches.bin").write_bytes(bytes(blob))
    res = csim(bad, timeout=300, cache_dir=build_cache)
    assert not res.passed and res.returncode == 1, res.summary
    assert res.summary.startswith("FAIL: ") and " 0 faults" in res.summary
    # that word is wrong from step 3 on (until a later stream rewrites it), nothing else
    m = res.mismatches[0]
    assert (m.step, m.stream, m.word) == (3, "decode_160", (addr + j) // 4)
    assert int(m.expected, 16) ^ int(m.got, 16) == 1
    assert {x.word for x in res.mismatches} == {m.word}
    assert [x.step for x in res.mismatches] == list(range(3, 3 + len(res.mismatches)))


# ----------------------------------------------------------------------------------------------
# every SFU function, every MPE format and epilogue, through the top level


def _f32_bytes(x: np.ndarray) -> bytes:
    return np.ascontiguousarray(x, dtype=np.float32).tobytes()


class _UnitStream:
    """A hand-made stream: inputs loaded into ACT, one instruction per case, ACT stored."""

    def __init__(self, rng: np.random.Generator, n_in: int) -> None:
        self.rng = rng
        self.hbm = bytearray()
        self.instrs: list[Instr] = []
        self.top = n_in  # ACT words in use
        self.masked = 0  # ACT address of the fully masked softmax rows
        x = rng.standard_normal(n_in).astype(np.float32) * 3
        x[:8] = [0.0, -0.0, 1e-40, -1e-40, 90.0, -90.0, 1e30, -1e30]
        self.ld(isa.B_ACT, 0, _f32_bytes(x))

    def put(self, raw: bytes) -> int:
        addr = len(self.hbm)
        self.hbm += raw + bytes(-len(raw) % 64)
        return addr

    def ld(self, buf: int, chip: int, raw: bytes) -> None:
        hbm = self.put(raw)
        f = {"buf": buf, "hbm": hbm, "chip": chip, "n_outer": 1, "n_inner": 1}
        self.instrs.append(Instr(isa.LD, {**f, "row_bytes": len(raw)}))

    def alloc(self, n: int) -> int:
        a = self.top
        self.top += -(-n // 16) * 16
        return a

    def sfu(self, func: int, no: int, ni: int, length: int, **kw: int) -> None:
        o = self.alloc(no * ni * length)
        f = {"func": func, "n_outer": no, "n_inner": ni, "len": length}
        f.update({"o_addr": o, "o_so": ni * length, "o_si": length, **kw})
        self.instrs.append(Instr(isa.SFU, f))

    def mpe(self, m: int, k: int, n: int, heads: int = 1, **kw: int) -> None:
        o = self.alloc(heads * m * n)
        op = isa.MV if m == 1 else isa.MM
        f = {"m": m, "k": k, "n": n, "heads": heads, "x_rs": k, **kw}
        f.update({"o_addr": o, "o_rs": n, "o_hs": m * n})
        self.instrs.append(Instr(op, f))

    def tile(self, n: int, k: int, wfmt: int, nnz: int, group: int, bias: bool) -> int:
        """Load a random weight tile into WGT at 0; returns the instruction's group field."""
        fmt = WeightFormat(wfmt, nnz, group)
        idx_off, sc_off, bi_off, end = tile_sections(n, k, fmt, bias)
        raw = np.zeros(end, dtype=np.uint8)
        cnt = n * (k // 16) * nnz
        rng = self.rng
        if wfmt in (isa.W_INT4, isa.W_INT8):
            raw[: cnt * isa.WFMT_BITS[wfmt] // 8] = rng.integers(
                0, 256, cnt * isa.WFMT_BITS[wfmt] // 8
            )
        elif wfmt == isa.W_F16:
            raw[: 2 * cnt] = np.frombuffer(
                rng.standard_normal(cnt).astype(np.float16).tobytes(), np.uint8
            )
        elif wfmt == isa.W_BF16:
            v = (rng.standard_normal(cnt).astype(np.float32).view(np.uint32) >> 16).astype(
                np.uint16
            )
            raw[: 2 * cnt] = np.frombuffer(v.tobytes(), np.uint8)
        else:
            raw[: 4 * cnt] = np.frombuffer(_f32_bytes(rng.standard_normal(cnt)), np.uint8)
        if nnz != 16:  # ascending distinct positions per block row, two per byte
            pos = np.sort(np.argsort(rng.random((cnt // nnz, 16)), axis=1)[:, :nnz], axis=1)
            p = pos.reshape(-1)
            raw[idx_off : idx_off + cnt // 2] = (p[0::2] | (p[1::2] << 4)).astype(np.uint8)
        if fmt.quantized:
            ns = (bi_off - sc_off) // 4
            raw[sc_off:bi_off] = np.frombuffer(_f32_bytes(rng.uniform(0.01, 0.1, ns)), np.uint8)
        if bias:
            raw[bi_off:end] = np.frombuffer(_f32_bytes(rng.standard_normal(n)), np.uint8)
        self.ld(isa.B_WGT, 0, raw.tobytes())
        return group or k

    def finish(self) -> tuple[np.ndarray, list[Instr]]:
        out = self.put(bytes(4 * self.top))
        f = {"buf": isa.B_ACT, "hbm": out, "n_outer": 1, "n_inner": 1, "row_bytes": 4 * self.top}
        self.instrs += [Instr(isa.ST, f), Instr(isa.SYNC, {"end": 1})]
        return np.frombuffer(bytes(self.hbm), dtype=np.uint8).copy(), self.instrs


def _unit_stream(seed: int) -> tuple[np.ndarray, list[Instr], int]:
    u = _UnitStream(np.random.default_rng(seed), 4096)
    ln = 64
    rows = (2, 3, ln)  # outer, inner, len
    a = dict(a_addr=8, a_so=3 * ln, a_si=ln)
    b = dict(b_addr=1000, b_so=0, b_si=ln)  # b broadcast over outer rows
    for fn in (isa.S_COPY, isa.S_SILU, isa.S_GELU, isa.S_GELU_TANH, isa.S_RELU, isa.S_SIGMOID):
        u.sfu(fn, *rows, **a)
    for fn in (isa.S_TANH, isa.S_EXP, isa.S_ADD, isa.S_MUL, isa.S_SUB):
        u.sfu(fn, *rows, **a, **b)
    u.sfu(isa.S_ADDC, *rows, **a, fparam=isa.f32_bits(0.375))
    u.sfu(isa.S_MULC, *rows, **a, fparam=isa.f32_bits(-1.5))
    gam = dict(b_addr=2000, b_so=0, b_si=0, c_addr=2100, c_so=0, c_si=0)
    eps = isa.f32_bits(1e-5)
    u.sfu(isa.S_RMSNORM, *rows, **a, **gam, fparam=eps)
    u.sfu(isa.S_RMSNORM, *rows, **a, fparam=eps, flags=isa.SF_NO_B)
    for fl in (0, isa.SF_NO_B, isa.SF_NO_C, isa.SF_NO_B | isa.SF_NO_C):
        u.sfu(isa.S_LAYERNORM, *rows, **a, **gam, fparam=eps, flags=fl)
    sm = dict(a_addr=200, a_so=4 * 48, a_si=48, fparam=isa.f32_bits(0.125))
    u.sfu(isa.S_SOFTMAX, 2, 4, 48, **sm, ival0=3, flags=isa.SF_CAUSAL | isa.SF_KEYLEN)
    u.sfu(isa.S_SOFTMAX, 2, 4, 48, **sm, ival0=40, ival1=6, flags=isa.SF_CAUSAL)
    # the window hides every key of these rows: zeros (numerics.softmax32)
    u.sfu(
        isa.S_SOFTMAX, 1, 2, 16, a_addr=300, a_si=16, fparam=isa.f32_bits(1.0), ival0=100, ival1=4
    )
    u.masked = u.instrs[-1].f["o_addr"]
    # in place, as attention does: copy the scores, then softmax over them
    u.sfu(isa.S_COPY, 2, 4, 48, **sm)
    sc = u.instrs[-1].f["o_addr"]
    f = {"func": isa.S_SOFTMAX, "n_outer": 2, "n_inner": 4, "len": 48, "ival0": 1}
    same = dict(a_addr=sc, a_so=4 * 48, a_si=48, o_addr=sc, o_so=4 * 48, o_si=48)
    u.instrs.append(Instr(isa.SFU, {**f, **same, "flags": isa.SF_CAUSAL}))
    rope = dict(a_addr=500, a_so=3 * ln, a_si=ln, b_addr=3000, b_si=48, c_addr=3400, c_si=48)
    for fl in (0, isa.SF_INTERLEAVED):
        u.sfu(isa.S_ROPE, *rows, **rope, ival0=48, flags=fl)
    # the MPE: every weight format, nnz, straddling groups, bias, every epilogue, acc
    aux = dict(aux_addr=1200, aux_rs=40)
    cases = [
        (isa.W_INT4, 8, 64, False, isa.F_SILU, 256),
        (isa.W_INT4, 2, 88, True, isa.F_ADD, 176),
        (isa.W_INT8, 4, 0, False, isa.F_MUL, 256),
        (isa.W_INT8, 16, 32, True, isa.F_GELU, 128),
        (isa.W_F16, 16, 0, False, isa.F_GELU_TANH, 128),
        (isa.W_BF16, 8, 0, True, isa.F_RELU, 160),
        (isa.W_F32, 4, 0, False, isa.F_NONE, 96),
    ]
    for i, (wfmt, nnz, group, bias, fuse, k) in enumerate(cases):
        g = u.tile(40, k, wfmt, nnz, group, bias)
        kw = dict(x_addr=16 * i, wbuf=isa.B_WGT, wfmt=wfmt, nnz=nnz, group=g, bias=int(bias))
        u.mpe(
            3 if i % 3 else 1,
            k,
            40,
            fuse=fuse,
            **kw,
            **(aux if fuse in (isa.F_ADD, isa.F_MUL) else {}),
        )
    g = u.tile(40, 256, isa.W_INT4, 8, 64, False)  # acc: the second run adds to the first
    u.mpe(3, 256, 40, x_addr=7, wbuf=isa.B_WGT, wfmt=isa.W_INT4, nnz=8, group=g, acc=1)
    # attention-shaped: 4 query heads on 2 kv heads, K (rows) and V (transposed) from KV
    kv = u.rng.standard_normal(2 * 64 * 32).astype(np.float32)
    u.ld(isa.B_KV, 0, _f32_bytes(kv))
    att = dict(heads=4, h0=0, hgroup=2, wbuf=isa.B_KV, wfmt=isa.W_F32, nnz=16, w_hs=64 * 32)
    u.mpe(3, 32, 64, x_addr=64, x_hs=96, group=32, w_rs=32, **att)
    u.mpe(3, 64, 32, x_addr=320, x_hs=192, group=64, w_rs=32, w_trans=1, **att)
    return (*u.finish(), u.masked)


def test_every_unit_function_matches_funcsim(hls_run, build_cache, tmp_path):
    prog, *_ = hls_run("int4-8of16")  # its build: same arch, same MPE_K_MAX
    hbm, instrs, masked = _unit_stream(0)
    k_max = HlsConfig.for_program(prog).k_max
    vec = record_vectors(prog.arch, hbm, [("unit", instrs, 0), ("unit", instrs, 7)], k_max)
    emit_project(prog, tmp_path, vectors=vec)
    res = csim(tmp_path, timeout=300, cache_dir=build_cache)
    assert res.passed, f"{res.summary}\n{res.output[-3000:]}"
    assert np.array_equal(res.hbm, vec.hbm_final)
    # the cases did run: the stored ACT differs from its initial zeros
    st = instrs[-2].f
    out = vec.hbm_final[st["hbm"] : st["hbm"] + st["row_bytes"]].view(np.float32)
    assert np.count_nonzero(out) > 0.9 * out.size
    assert not out[masked : masked + 32].view(np.uint32).any()


# ----------------------------------------------------------------------------------------------
# the SFU's scalar functions against numerics.py, compiled on their own (no ap_types needed)

SFU_DRIVER = r"""
#include <cstdio>
#include <vector>
#include "sfu.h"
typedef float (*fn_t)(float);
int main(int argc, char** argv) {
  std::FILE* in = std::fopen(argv[1], "rb");
  std::vector<float> x;
  float v;
  while (std::fread(&v, 4, 1, in) == 1) x.push_back(v);
  std::fclose(in);
  const fn_t fns[] = {exp32, sigmoid32, silu32, tanh32, relu32, erf32, gelu32, gelu_tanh32};
  std::FILE* out = std::fopen(argv[2], "wb");
  for (fn_t f : fns)
    for (float xi : x) {
      const float y = f(xi);
      std::fwrite(&y, 4, 1, out);
    }
  std::fclose(out);
  return 0;
}
"""
SFU_FUNCS = [
    nm.exp32,
    nm.sigmoid32,
    nm.silu32,
    nm.tanh32,
    nm.relu32,
    nm.erf32,
    nm.gelu32,
    nm.gelu_tanh32,
]


def _sfu_inputs() -> np.ndarray:
    rng = np.random.default_rng(1)
    k = nm.K
    near = []
    for c in (k["EXP_LO"], k["EXP_HI"], -k["EXP_LO"], -k["EXP_HI"]):
        v = np.float32(c)
        for _ in range(8):
            near += [v]
            v = np.nextafter(v, np.float32(np.inf))
        v = np.float32(c)
        for _ in range(8):
            v = np.nextafter(v, np.float32(-np.inf))
            near += [v]
    edges = [0.0, -0.0, np.inf, -np.inf, np.nan, 1e-45, -1e-45, 1e-38, -1e-38, 3.4e38, -3.4e38]
    parts = [
        np.array(edges + near, dtype=np.float32),
        rng.standard_normal(60000).astype(np.float32) * 4,
        rng.uniform(-120, 120, 30000).astype(np.float32),
        rng.uniform(-87.5, -80, 10000).astype(np.float32),  # exp: results down to FLT_MIN / 2
        (rng.standard_normal(2000) * 1e-38).astype(np.float32),  # subnormal inputs
        np.linspace(-20, 20, 8001, dtype=np.float32),
    ]
    return np.concatenate(parts)


def test_sfu_functions_match_numerics_bit_for_bit(cxx, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    cfg = HlsConfig.for_arch(load_arch("u280"), 1024)
    for pf in PROJECT_FILES:  # sfu.h and the two headers it includes
        if pf.path in ("src/sfu.h", "src/isa.h", "src/llmc_config.h"):
            (tmp_path / pf.path).write_text(pf.render(cfg))
    drv = tmp_path / "sfu_driver.cpp"
    drv.write_text(SFU_DRIVER)
    exe = tmp_path / "sfu_driver"
    cmd = [cxx, *CXXFLAGS, f"-I{src}", str(drv), "-o", str(exe)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    x = _sfu_inputs()
    x.tofile(tmp_path / "in.bin")
    subprocess.run([str(exe), str(tmp_path / "in.bin"), str(tmp_path / "out.bin")], check=True)
    got = np.fromfile(tmp_path / "out.bin", dtype=np.float32).reshape(len(SFU_FUNCS), x.size)
    with np.errstate(all="ignore"):
        for fn, g in zip(SFU_FUNCS, got):
            want = fn(x)
            nan = np.isnan(want)
            assert np.array_equal(nan, np.isnan(g)), fn.__name__
            diff = np.flatnonzero(want.view(np.uint32)[~nan] != g.view(np.uint32)[~nan])
            if diff.size:
                i = np.flatnonzero(~nan)[diff[0]]
                pytest.fail(
                    f"{fn.__name__}({x[i]!r} = 0x{x.view(np.uint32)[i]:08x}): numerics "
                    f"0x{want.view(np.uint32)[i]:08x}, C++ 0x{g.view(np.uint32)[i]:08x} "
                    f"({diff.size} of {x.size} differ)"
                )
    # the edge cases hit what they should: exp down to FLT_MIN (numerics flushes below EXP_LO),
    # saturation, and subnormal results (silu of subnormal inputs)
    tiny = np.finfo(np.float32).tiny
    e = got[0]
    assert 0 < e[e > 0].min() < 2 * tiny
    assert np.any(e == np.inf) and np.any((e == 0) & (x < 0))
    assert np.any((got[2] != 0) & (np.abs(got[2]) < tiny))


# ----------------------------------------------------------------------------------------------
# emitted text


def _golden_texts(prog) -> dict[str, str]:
    cfg = HlsConfig.for_program(prog)
    keep = ("src/", "csim/", "vitis_hls.tcl")
    return {Path(pf.path).name: pf.render(cfg) for pf in PROJECT_FILES if pf.path.startswith(keep)}


def test_emitted_sources_golden(tiny_graph):
    prog = build_program(tiny_graph("dense"), load_arch("u280"))
    texts = _golden_texts(prog)
    update = os.environ.get("LLMC_UPDATE_GOLDEN") == "1"
    if update:
        GOLDEN.mkdir(parents=True, exist_ok=True)
    problems = []
    for name, text in texts.items():
        path = GOLDEN / name
        if update:
            path.write_text(text)
            continue
        if not path.exists():
            problems.append(f"missing golden {path}; run with LLMC_UPDATE_GOLDEN=1 to create it")
            continue
        want = path.read_text()
        if text != want:
            diff = difflib.unified_diff(
                want.splitlines(True), text.splitlines(True), f"golden/{name}", name, n=2
            )
            problems.append("".join(list(diff)[:60]))
    stale = {p.name for p in GOLDEN.glob("*")} - set(texts) if GOLDEN.exists() else set()
    problems += [f"golden {GOLDEN / s} is emitted no more; delete it" for s in sorted(stale)]
    if problems:
        pytest.fail("emitted HLS differs (LLMC_UPDATE_GOLDEN=1 accepts):\n" + "\n".join(problems))


def test_pragmas_where_vitis_wants_them(tiny_graph):
    texts = _golden_texts(build_program(tiny_graph("dense"), load_arch("u280")))
    top, mpe, sfu = texts["llmc_top.cpp"], texts["mpe.h"], texts["sfu.h"]
    for port, bundle in (("instr", "gmem_instr"), ("hbm", "gmem_hbm")):
        assert re.search(rf"INTERFACE m_axi port={port} offset=slave bundle={bundle}\b", top)
    for port in ("instr", "hbm", "n_instr", "hbm_bytes", "r_pos", "return"):
        assert f"#pragma HLS INTERFACE s_axilite port={port} bundle=control" in top
    for buf in ("wgt_buf", "kv_buf"):
        assert f"#pragma HLS ARRAY_PARTITION variable={buf} type=cyclic factor=16" in top
    # the dataflow region: load / chain / store around the partitioned row buffer
    region = mpe[mpe.index("static void mpe_token") :]
    region = region[: region.index("\n}\n")]
    assert "#pragma HLS DATAFLOW" in region
    assert "#pragma HLS ARRAY_PARTITION variable=xbuf type=cyclic factor=16" in region
    assert region.index("mpe_load(") < region.index("mpe_chain(") < region.index("mpe_store(")
    # the chain: one block per cycle, the 16 lanes unrolled
    chain = mpe[mpe.index("mpe_blocks:") :]
    assert chain.index("#pragma HLS PIPELINE II=1") < chain.index("mpe_lanes:")
    assert chain.index("mpe_lanes:") < chain.index("#pragma HLS UNROLL")
    # every inner loop of the SFU and the LOAD/STORE copy is pipelined
    piped = []
    for text in (sfu, top):
        for m in re.finditer(r"\n *(\w+):\n\s+for \(int64_t \w+ = [^)]*\) \{\n(.*)\n", text):
            if m.group(1) not in ("sfu_outer", "sfu_inner", "ldst_outer", "ldst_inner"):
                assert m.group(2).strip() == "#pragma HLS PIPELINE II=1", m.group(1)
                piped.append(m.group(1))
    assert {"ldst_copy", "sfu_pointwise_loop", "sfu_sm_sum", "sfu_rope_rot"} <= set(piped)
    # no FMA: the build says so, and the kernels never call fma
    assert "-ffp-contract=off" in CXXFLAGS and "fast-math" not in " ".join(CXXFLAGS)
    assert not re.search(r"\bfmaf?\(", mpe + sfu + top)


def test_decoder_is_generated_from_the_isa_table(tiny_graph):
    texts = _golden_texts(build_program(tiny_graph("dense"), load_arch("u280")))
    dec, hdr = texts["isa_decode.h"], texts["isa.h"]
    for op, fields in isa.FIELDS.items():
        name = {isa.LD: "ldst", isa.ST: "ldst", isa.MM: "mmmv", isa.MV: "mmmv"}.get(
            op, isa.OP_NAMES[op].lower()
        )
        body = dec[dec.index(f"decode_{name}(") :]
        body = body[: body.index("return f;")]
        pos = 0
        for fname, bits in fields:
            conv = "to_uint" if bits <= 32 else "to_uint64"
            assert f"f.{fname} = w.range({pos + bits - 1}, {pos}).{conv}();" in body, fname
            pos += bits
        assert f"static const uint32_t OP_{isa.OP_NAMES[op]} = {op};" in hdr
    for c, n in nm.CONSTANTS.items():
        assert f"K_{c} = {float(n).hex()}f;" in texts["sfu.h"]


# ----------------------------------------------------------------------------------------------
# templates and checks


def test_templates_have_no_unfilled_slots():
    cfg = HlsConfig.for_arch(load_arch("vhk158"), 2048)
    used = set()
    for pf in PROJECT_FILES:
        t = Slots((TEMPLATES / pf.template).read_text())
        assert set(t.get_identifiers()) == set(pf.slots(cfg)), pf.template
        text = pf.render(cfg)
        assert not re.search(r"\$\{[a-z_][a-z0-9_]*\}", text), pf.path
        used.add(pf.template)
    assert used == {p.name for p in TEMPLATES.glob("*.tmpl")}, "a template no file uses"
    # shell and make syntax passes through the slots untouched
    files = {pf.path: pf for pf in PROJECT_FILES}
    assert '"${AP_TYPES:-}"' in files["run_csim.sh"].render(cfg)
    mk = files["Makefile"].render(cfg)
    assert "$(CXX) $(CXXFLAGS)" in mk and "\n\t" in mk
    with pytest.raises(HlsError, match="missing \\['top'\\]"):
        render("llmc_top.h.tmpl", {"banner": "x"})
    with pytest.raises(HlsError, match="unused \\['extra'\\]"):
        render("mpe.h.tmpl", {"banner": "x", "extra": "y"})


def _sfu(**f: int) -> Instr:
    return Instr(isa.SFU, {"n_outer": 1, "n_inner": 1, **f})


@pytest.mark.parametrize(
    "ins, why",
    [
        # RoPE in place reads partners it already overwrote
        (_sfu(func=isa.S_ROPE, len=8, ival0=8, b_addr=100, c_addr=200), "earlier row"),
        # rows overlapping the next row's input
        (_sfu(func=isa.S_SILU, n_inner=2, len=8, a_si=8, o_addr=4, o_si=8), "earlier row"),
        (_sfu(func=isa.S_COPY, n_inner=2, len=8, a_si=8, o_si=0, o_addr=100), "twice"),
        (Instr(isa.LD, {"buf": isa.B_ACT, "hbm": 2, "row_bytes": 8}), "multiple of 4"),
        (Instr(isa.MM, {"m": 1, "k": 2048, "n": 4, "wbuf": isa.B_WGT}), "MPE_K_MAX"),
        (Instr(isa.MM, {"m": 1, "k": 16, "n": 4, "wbuf": isa.B_ACT}), "only WGT and KV"),
        (Instr(isa.SYNC, {"end": 1}), "SYNC end before"),
    ],
)
def test_check_stream_rejects_what_the_units_cannot_run(ins, why):
    cfg = HlsConfig.for_arch(load_arch("u280"), 1024)
    with pytest.raises(HlsError, match=why):
        check_stream([ins, Instr(isa.SYNC, {"end": 1})], cfg)
    # in place is fine for everything but RoPE
    ok = _sfu(func=isa.S_SOFTMAX, n_inner=2, len=8, a_si=8, o_si=8, fparam=isa.f32_bits(1.0))
    check_stream([ok, Instr(isa.SYNC, {"end": 1})], cfg)


def test_missing_tools_say_what_to_install(monkeypatch):
    monkeypatch.setenv("CXX", "no-such-compiler-llmc")
    with pytest.raises(HlsToolchainError, match="apt-get install g\\+\\+"):
        find_cxx()
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(HlsToolchainError, match="pip install hls4ml==1.3.0"):
        find_ap_types()
    assert find_ap_types(required=False) is None
