"""SimCache: boards differing only in TIMING_KEYS lower to the same streams, and a cached
simulation equals a fresh one."""

from __future__ import annotations

import pytest

from llmc.compile import load, run_passes
from llmc.fpga.arch import load_arch
from llmc.fpga.program import build_program
from llmc.fpga.sim import TIMING_KEYS, SimCache, simulate, structure_key


@pytest.fixture(scope="module")
def tiny8():
    g = load("tiny").graph
    run_passes(g, "rtn:bits=8:group=0", None, target="u280", options={})
    return g


def _other(v):
    if isinstance(v, bool):
        return not v
    if isinstance(v, int):
        return v * 2 + 1
    if isinstance(v, float):
        return v * 0.55 if v <= 1 else v * 1.7
    return f"{v} (changed)"


def _streams(prog):
    a = prog.arch
    keys = [("prefill", 0), ("decode", a.decode_bucket), ("decode", 4 * a.decode_bucket)]
    return [prog.stream(st, b).encode() for st, b in keys]


@pytest.mark.parametrize("key", sorted(TIMING_KEYS))
def test_timing_keys_do_not_change_the_streams(tiny8, key) -> None:
    base = load_arch("u280")
    v = base.get(key)
    other = load_arch("u280", [f"{key}={_other(v)}"])
    assert other.get(key) != v
    assert structure_key(other) == structure_key(base)
    assert _streams(build_program(tiny8, other)) == _streams(build_program(tiny8, base))


def test_structural_key_changes_the_key(tiny8) -> None:
    base = load_arch("u280")
    other = load_arch("u280", ["decode_bucket=32"])
    assert structure_key(other) != structure_key(base)


def test_cached_simulation_equals_fresh(tiny8) -> None:
    cache = SimCache()
    for sets in ([], ["hbm.bandwidth_gbs=200"], ["clock_mhz=300", "dsp.total=9000"], []):
        a = load_arch("u280", sets)
        got = simulate(tiny8, a, 64, 32, storage=False, cache=cache)
        want = simulate(tiny8, a, 64, 32, storage=False)
        assert got.prefill_ms == want.prefill_ms
        assert got.decode_ms_per_token == want.decode_ms_per_token


def test_cached_simulation_equals_fresh_folded() -> None:
    """The folded path (a 32-layer model: streams derived from the 2-, 3- and 4-layer copies)."""
    from llmc.frontends import zoo

    g = zoo.build("llama2-7b")
    run_passes(g, "rtn:bits=8:group=0", None, target="vhk158", options={})
    cache = SimCache()
    for sets in ([], ["hbm.bandwidth_gbs=460"]):
        a = load_arch("vhk158", sets)
        got = simulate(g, a, 128, 16, storage=False, cache=cache)
        want = simulate(g, a, 128, 16, storage=False)
        assert got.prefill_ms == want.prefill_ms
        assert got.decode_ms_per_token == want.decode_ms_per_token
        assert any("layer folding" in n for n in got.notes)
