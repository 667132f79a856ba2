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
