"""The ``cpu`` target's roofline uses this machine's measured figures (llmc.targets.host)."""

from __future__ import annotations

import json

import pytest

from llmc.targets import get_target, resolve_spec
from llmc.targets import host as hostspec


def test_measured_once_then_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMC_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("LLMC_HOST_SPEC", raising=False)
    calls = []
    real = hostspec.measure_read_bandwidth

    def probe(threads, mib=16, repeats=3):  # a small probe: the test checks plumbing
        calls.append(threads)
        return real(threads, mib=mib, repeats=repeats)

    monkeypatch.setattr(hostspec, "measure_read_bandwidth", probe)
    t = get_target("cpu")
    a = resolve_spec(t)
    b = resolve_spec(t)
    assert len(calls) == 1  # the second came from the cache file
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
