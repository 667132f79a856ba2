"""The ``cpu`` target's roofline uses this machine's measured figures (llmc.targets.host)."""

from __future__ import annotations

import json
import os

import pytest

from llmc.targets import get_target, resolve_spec
from llmc.targets import host as hostspec


def test_measured_once_then_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMC_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("LLMC_HOST_SPEC", raising=False)
    calls = []
    real = hostspec.measure_read_bandwidth

    def probe(threads, mib=None, repeats=3, clock=None):  # small: the test checks plumbing
        calls.append(mib)
        return real(threads, mib=4, repeats=2)

    monkeypatch.setattr(hostspec, "measure_read_bandwidth", probe)
    t = get_target("cpu")
    a = resolve_spec(t)
    # DRAM, then the LLC sweep where sysfs has a level 3
    assert calls[0] is None and calls[1:] == hostspec.llc_sweep_mib(
        hostspec.cache_levels(), min(hostspec._threads(), os.cpu_count() or 1)
    )
    n = len(calls)
    b = resolve_spec(t)
    assert len(calls) == n  # the second came from the cache file
    (f,) = tmp_path.glob("host-spec-*.json")
    rec = json.loads(f.read_text())
    assert a.mem_bandwidth == b.mem_bandwidth == pytest.approx(rec["read_bytes_per_s"])
    assert 1e8 < a.mem_bandwidth < 1e13  # bytes/s of a real memory system
    assert a.source.startswith("this host:") and str(f) in a.source
    assert a.peak("f32") > 0 and a.mem_bytes > 0


def test_nominal_on_request(monkeypatch):
    monkeypatch.setenv("LLMC_HOST_SPEC", "nominal")
    t = get_target("cpu")
    assert resolve_spec(t) is t.spec


def test_gpu_targets_keep_their_data_sheet():
    t = get_target("h100")
    assert resolve_spec(t) is t.spec


def test_compile_report_uses_host_spec(tmp_path, monkeypatch):
    from llmc.compile import compile_model

    monkeypatch.setenv("LLMC_CACHE_DIR", str(tmp_path))
    rec = {"cpu": "test", "cores": 1, "threads": 1, "read_bytes_per_s": 1e10, "measured": "then"}
    rec["llc"] = {"bytes": 0}  # no LLC probe in a test
    monkeypatch.setattr(hostspec, "_cache_file", lambda key: tmp_path / "spec.json")
    (tmp_path / "spec.json").write_text(json.dumps(rec))
    rf = compile_model("tiny", target="cpu", dry_run=True).report["roofline"]
    assert rf["mem_bandwidth"] == 1e10 and "10.0 GB/s" in rf["spec_source"]


def test_recorded_peak_is_used(tmp_path, monkeypatch):
    """bench/cpu_peak.py --record stores per-core rates; the spec multiplies by the threads and
    names the measurement as the source."""
    monkeypatch.setenv("LLMC_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("LLMC_HOST_SPEC", raising=False)
    monkeypatch.setenv("TVM_NUM_THREADS", "1")
    rec = {"cpu": "t", "cores": 1, "threads": 1, "read_bytes_per_s": 1e10, "measured": "then"}
    rec["llc"] = {"bytes": 0}
    monkeypatch.setattr(hostspec, "PEAKS_FILE", tmp_path / "no-table.json")
    rec["peak"] = {
        "f32_per_core": 1.17e11,
        "i8_per_core": 4.68e11,
        "measured": "now",
        "command": "c",
    }
    monkeypatch.setattr(hostspec, "_cache_file", lambda key: tmp_path / "spec.json")
    (tmp_path / "spec.json").write_text(json.dumps(rec))
    s = resolve_spec(get_target("cpu"))
    assert s.peak("f32") == pytest.approx(1.17e11) and s.peak("i8") == pytest.approx(4.68e11)
    assert "measured now by c" in s.sources["peak_tflops.f32"]
    del rec["peak"]
    (tmp_path / "spec.json").write_text(json.dumps(rec))
    s = resolve_spec(get_target("cpu"))
    assert "FLOP/cycle" in s.sources["peak_tflops.f32"]


def test_flop_per_cycle_zen4_double_pumps():
    avx512 = {"avx", "avx2", "avx512f", "avx512_vnni"}
    zen4 = {"vendor_id": "AuthenticAMD", "cpu family": "25"}
    intel = {"vendor_id": "GenuineIntel", "cpu family": "6"}
    assert hostspec.flop_per_cycle(avx512, zen4)[:2] == (32, 128)
    assert hostspec.flop_per_cycle(avx512, intel)[:2] == (64, 256)
    assert hostspec.flop_per_cycle({"avx", "avx2"}, intel)[:2] == (32, 64)


# -------------------------------------------------- committed peaks, the last-level cache

FAKE = {
    "model name": "Fake CPU 9000",
    "flags": "fpu avx2 fma avx512f avx512_vnni",
    "cpu MHz": "2000",
}


def _fake_host(tmp_path, monkeypatch, rows, rec_peak=None):
    """A fake 2-core CPU, a cache record (with ``rec_peak``) and a committed table of ``rows``."""
    monkeypatch.setenv("LLMC_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("LLMC_HOST_SPEC", raising=False)
    monkeypatch.setenv("TVM_NUM_THREADS", "2")
    monkeypatch.setattr(hostspec, "_cpuinfo", lambda: dict(FAKE))
    monkeypatch.setattr(hostspec.os, "cpu_count", lambda: 2)
    rec = {"cpu": "Fake CPU 9000", "cores": 2, "threads": 2, "read_bytes_per_s": 1e10}
    rec.update(measured="then", llc={"bytes": 0})
    if rec_peak:
        rec["peak"] = rec_peak
    monkeypatch.setattr(hostspec, "_cache_file", lambda key: tmp_path / "spec.json")
    (tmp_path / "spec.json").write_text(json.dumps(rec))
    table = tmp_path / "cpu_peaks.json"
    table.write_text(json.dumps({"peaks": rows}))
    monkeypatch.setattr(hostspec, "PEAKS_FILE", table)


def _row(cpu="Fake CPU 9000", isa=("avx2", "fma", "avx512f", "avx512_vnni"), cores=2, f32=1e11):
    return {
        "cpu": cpu,
        "isa": list(isa),
        "cores": cores,
        "f32_per_core": f32,
        "i8_per_core": 4 * f32,
        "measured": "day",
        "command": "bench/cpu_peak.py --table",
    }


def test_peak_precedence_cache_then_committed_then_formula(tmp_path, monkeypatch):
    cached = {"f32_per_core": 3e11, "i8_per_core": 1.2e12, "measured": "now", "command": "c"}
    _fake_host(tmp_path, monkeypatch, [_row(f32=1e11)], rec_peak=cached)
    s = resolve_spec(get_target("cpu"))
    assert s.peak("f32") == pytest.approx(2 * 3e11)  # the cache wins
    assert "measured now by c" in s.sources["peak_tflops.f32"]
    _fake_host(tmp_path, monkeypatch, [_row(f32=1e11)])
    s = resolve_spec(get_target("cpu"))
    assert s.peak("f32") == pytest.approx(2e11) and s.peak("i8") == pytest.approx(8e11)
    assert "cpu_peaks.json" in s.sources["peak_tflops.i8"]
    _fake_host(tmp_path, monkeypatch, [_row(cpu="Other CPU")])
    s = resolve_spec(get_target("cpu"))  # 2 threads x 2.0 GHz x 64 FLOP/cycle
    assert s.peak("f32") == pytest.approx(2 * 2e9 * 64) and "FLOP/cycle" in s.source


def test_committed_peak_key(tmp_path):
    flags = {"avx2", "fma", "avx512f", "avx512_vnni", "sse4_2"}  # sse4_2 is not in the key
    t = tmp_path / "t.json"
    t.write_text(json.dumps({"peaks": [_row(cores=4, f32=1.0), _row(cores=2, f32=2.0)]}))
    assert hostspec.committed_peak("Fake CPU 9000", flags, 2, t)["f32_per_core"] == 2.0
    # another core count: the same CPU's per-core rates, the row says which cores
    assert hostspec.committed_peak("Fake CPU 9000", flags, 8, t)["cores"] == 4
    assert hostspec.committed_peak("Fake CPU 9000", flags | {"amx_int8"}, 2, t) is None
    assert hostspec.committed_peak("Fake CPU 9000", flags - {"avx512_vnni"}, 2, t) is None
    assert hostspec.committed_peak("Other", flags, 2, t) is None
    assert hostspec.committed_peak("Fake CPU 9000", flags, 2, tmp_path / "missing.json") is None
    assert hostspec.peak_key("X", flags, 2) == {
        "cpu": "X",
        "isa": ["avx2", "fma", "avx512f", "avx512_vnni"],
        "cores": 2,
    }


def test_committed_table_is_well_formed():
    rows = json.loads(hostspec.PEAKS_FILE.read_text())["peaks"]
    keys = [(r["cpu"], tuple(r["isa"]), r["cores"]) for r in rows]
    assert len(set(keys)) == len(keys) and any(r["cpu"] == "AMD EPYC" for r in rows)
    for r in rows:
        assert set(r["isa"]) <= set(hostspec.PEAK_ISA)
        assert r["f32_per_core"] > 0 and r["i8_per_core"] > 0 and r["measured"]
        assert isinstance(r["amx"], dict) == ("amx_int8" in r["isa"])


def _sysfs(root, caches):
    for i, (level, kind, size, shared) in enumerate(caches):
        d = root / f"index{i}"
        d.mkdir(parents=True)
        for name, v in (
            ("level", level),
            ("type", kind),
            ("size", size),
            ("shared_cpu_list", shared),
        ):
            (d / name).write_text(f"{v}\n")
    return root


def test_cache_levels_and_llc_probe_size(tmp_path):
    emr = _sysfs(
        tmp_path / "emr",
        [
            (1, "Data", "48K", "0"),
            (1, "Instruction", "32K", "0"),
            (2, "Unified", "2048K", "0"),
            (3, "Unified", "307200K", "0-1"),
        ],
    )
    lv = hostspec.cache_levels(emr)
    assert lv == {
        1: {"bytes": 48 << 10, "shared_cpus": 1},
        2: {"bytes": 2 << 20, "shared_cpus": 1},
        3: {"bytes": 300 << 20, "shared_cpus": 2},
    }
    assert hostspec.llc_probe_mib(lv, 2) == 8  # twice the two threads' L2
    assert hostspec.llc_probe_mib(lv, 1) == 4
    assert hostspec.llc_sweep_mib(lv, 2) == [8, 16, 32, 64, 128, 256]
    small = {2: {"bytes": 1 << 20}, 3: {"bytes": 16 << 20}}
    assert hostspec.llc_probe_mib(small, 2) == 4
    assert hostspec.llc_probe_mib(small, 4) is None  # 8 MiB would be half the LLC
    assert hostspec.llc_probe_mib({1: {"bytes": 1}, 2: {"bytes": 1 << 20}}, 1) is None  # no L3
    assert hostspec.llc_sweep_mib({2: {"bytes": 1 << 20}}, 1) == []
    assert hostspec.cache_levels(tmp_path / "none") == {}


def test_effective_llc():
    """The LLC as a thread sees it: the bandwidth at the smallest set, the largest set keeping
    80% of it; none when it does not beat DRAM by 1.2x. The numbers are the Xeon VM's sweep."""
    gbs = {4: 25.5, 8: 25.3, 16: 25.5, 32: 24.9, 64: 17.1, 128: 13.4, 256: 13.3}
    by = {m: g * 1e9 for m, g in gbs.items()}
    assert hostspec.effective_llc(by, 13.3e9) == (32 << 20, 25.5e9)
    by[64] = 21e9  # 82% of the plateau: still the cache
    assert hostspec.effective_llc(by, 13.3e9) == (64 << 20, 25.5e9)
    assert hostspec.effective_llc(by, 22e9) is None  # no faster than DRAM
    assert hostspec.effective_llc({}, 1e9) is None


def test_llc_figures_reach_the_spec(tmp_path, monkeypatch):
    _fake_host(tmp_path, monkeypatch, [])
    rec = json.loads((tmp_path / "spec.json").read_text())
    rec["llc"] = {
        "bytes": 300 << 20,
        "effective_bytes": 32 << 20,
        "read_bytes_per_s": 2.5e10,
        "measured": "x",
    }
    (tmp_path / "spec.json").write_text(json.dumps(rec))
    s = resolve_spec(get_target("cpu"))
    assert s.llc_bytes == 32 << 20 and s.llc_bandwidth == 2.5e10
    assert "LLC 300 MiB reported" in s.source and "32 MiB of it" in s.source
    rec["llc"] = {"bytes": 300 << 20, "effective_bytes": 0, "read_bytes_per_s": 0.0}
    (tmp_path / "spec.json").write_text(json.dumps(rec))
    s = resolve_spec(get_target("cpu"))
    assert s.llc_bytes == 0 and s.llc_bandwidth == 0 and "no LLC level" in s.source


def test_old_record_gains_an_llc_probe(tmp_path, monkeypatch):
    """A record from before the LLC probe keeps its DRAM figure and gets the LLC's added once."""
    _fake_host(tmp_path, monkeypatch, [])
    rec = json.loads((tmp_path / "spec.json").read_text())
    del rec["llc"]
    (tmp_path / "spec.json").write_text(json.dumps(rec))
    levels = {2: {"bytes": 2 << 20, "shared_cpus": 1}, 3: {"bytes": 64 << 20, "shared_cpus": 2}}
    monkeypatch.setattr(hostspec, "cache_levels", lambda: levels)
    calls = []
    fake = {8: 3e10, 16: 2.9e10, 32: 1.2e10, 64: 1e10}  # bytes/s by MiB: the cache ends at 16

    def probe(th, mib=256, repeats=5, clock=None):
        calls.append(mib)
        return fake[mib]

    monkeypatch.setattr(hostspec, "measure_read_bandwidth", probe)
    s = resolve_spec(get_target("cpu"))
    assert calls == [8, 16, 32, 64] and s.mem_bandwidth == 1e10
    assert s.llc_bandwidth == 3e10 and s.llc_bytes == 16 << 20
    assert json.loads((tmp_path / "spec.json").read_text())["llc"]["read_gbs_by_mib"]["32"] == 12
    resolve_spec(get_target("cpu"))
    assert len(calls) == 4  # cached
