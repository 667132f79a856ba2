"""llmc/targets: the registry, the data files (round trip, sources), overrides for every kind, the
errors a user can cause (one line naming the key or file), and the CLI paths that use them."""

from __future__ import annotations

import json
import math

import pytest
import yaml

from llmc.cli import main
from llmc.errors import LlmcError, TargetError
from llmc.targets import (
    KINDS,
    SPEC_KEYS,
    check_override,
    configure_target,
    files,
    get_kind,
    get_target,
    resolve_spec,
    target_names,
)
from llmc.targets.spec import PEAK_PREFIX, parse_override

GPUS = ("a100", "h100", "mi250x", "mi300x")


def test_registry_names_and_kinds():
    assert {"ref", "cpu", *GPUS, "u280", "vhk158"} <= set(target_names())
    for name in target_names():
        t = get_target(name)
        assert t.name == name and t.kind in KINDS and get_kind(t.kind).lower is not None
    assert get_target("h100") is get_target("h100")  # built once
    with pytest.raises(TargetError, match=r"unknown target 'h10'; did you mean 'h100'"):
        get_target("h10")
    # the TVM kinds have pipelines; the FPGA kind builds its targets from its own file format
    assert {k for k, v in KINDS.items() if v.pipeline} == {"cpu", "cuda", "rocm"}
    assert get_kind("fpga").build and get_kind("fpga").configure
    with pytest.raises(TargetError, match="unknown target kind 'tpu'"):
        get_kind("tpu")


@pytest.mark.parametrize("name", GPUS)
def test_gpu_files_have_a_source_per_figure(name):
    spec = get_target(name).spec
    assert spec is not None and spec.source
    keys = [*SPEC_KEYS, *(PEAK_PREFIX + d for d in spec.peak_flops)]
    for k in keys:
        assert spec.sources.get(k), (name, k)
    # a data sheet's dense figures, in the stored units
    assert 1e12 < spec.mem_bandwidth < 1e13 and spec.mem_bytes >= 80e9
    assert spec.peak("f16") > spec.peak("f32") > 1e13


def test_h100_figures():
    s = get_target("h100").spec
    assert s.mem_bandwidth == 3.35e12 and s.peak("bf16") == 989.4e12 and s.mem_bytes == 80e9
    assert s.get("bandwidth_gbs") == 3350 and s.get("peak_tflops.f8") == pytest.approx(1978.9)


def test_yaml_round_trip(tmp_path):
    """A spec written in its key form and read back is the same spec."""
    t = get_target("mi300x")
    doc = {
        "kind": t.kind,
        "description": t.description,
        "tvm_target": t.tvm_target,
        "source": t.spec.source,
        "spec": t.spec.to_dict(),
    }
    p = tmp_path / "mine.yaml"
    p.write_text(yaml.safe_dump(doc))
    back = files.load_target_file("mine", p)
    assert back.kind == t.kind and back.tvm_target == t.tvm_target
    assert back.spec.peak_flops == pytest.approx(t.spec.peak_flops)
    for k in ("mem_bandwidth", "mem_bytes", "power_w", "price_usd"):
        assert getattr(back.spec, k) == pytest.approx(getattr(t.spec, k))


@pytest.mark.parametrize(
    "text, msg",
    [
        ("kind: cuda\nspec: [1, 2]\n", "'spec' must be a mapping"),
        ("kind: cuda\nspec: {bandwidth_gbs: 1}\n", "spec is missing mem_gb"),
        ("kind: cuda\nspec: {bandwith_gbs: 1}\n", "bandwith_gbs: unknown spec key"),
        ("kind: cuda\nspec: {bandwidth_gbs: {source: x}}\n", "without 'value'"),
        ("kind: cuda\ncolour: red\n", "unknown field"),
        ("- 1\n", "expected a mapping"),
        ("kind: cuda\nspec: {bandwidth_gbs: !!python/object/apply:os.system [echo]}\n", "YAML"),
    ],
)
def test_bad_target_files_name_file_and_key(tmp_path, text, msg):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(TargetError, match="bad.yaml") as e:
        files.load_target_file("bad", p)
    assert msg in str(e.value) and "\n" not in str(e.value)


def test_overrides_every_kind(monkeypatch):
    monkeypatch.setenv("LLMC_HOST_SPEC", "nominal")
    h = get_target("h100").with_overrides(["bandwidth_gbs=4800", "peak_tflops.f16=1200"])
    assert h.spec.mem_bandwidth == 4.8e12 and h.spec.peak("f16") == 1.2e15
    assert h.spec.peak("bf16") == 989.4e12  # untouched figures stay
    assert "--set bandwidth_gbs=4800" in h.spec.sources["bandwidth_gbs"]
    assert get_target("h100").spec.mem_bandwidth == 3.35e12  # the registry's is unchanged
    c = get_target("cpu").with_overrides(["mem_gb=8"])
    assert c.spec.mem_bytes == 8e9 and "spec" not in c.extra  # frozen: no re-measuring
    assert resolve_spec(c) is c.spec
    r = get_target("mi250x").with_overrides(["power_w=0"])  # 0 W: not recorded, allowed
    assert r.spec.power_w == 0
    f = get_target("u280").with_overrides(["hbm.bandwidth_gbs=920"])
    assert f.spec.mem_bandwidth == 920e9 and f.extra["arch"].hbm.bandwidth_gbs == 920


@pytest.mark.parametrize(
    "text, word",
    [
        ("bandwidth=1", "bandwidth"),
        ("bandwidth_gbs=0", "bandwidth_gbs"),
        ("bandwidth_gbs=-3", "bandwidth_gbs"),
        ("mem_gb=.nan", "mem_gb"),
        ("mem_gb=.inf", "mem_gb"),
        ("price_usd=cheap", "price_usd"),
        ("peak_tflops.f7=3", "peak_tflops.f7"),
        ("bandwidth_gbs", "KEY=VALUE"),
        ("power_w=true", "power_w"),
    ],
)
def test_bad_overrides_are_one_line(text, word):
    with pytest.raises(TargetError) as e:
        get_target("h100").with_overrides([text])
    assert word in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(TargetError):
        check_override(get_target("a100"), text)


def test_fpga_overrides_go_through_the_board_fields():
    with pytest.raises(LlmcError, match="unknown field 'bandwidth_gbs'"):
        check_override(get_target("vhk158"), "bandwidth_gbs=4800")
    check_override(get_target("vhk158"), "dsp.total=4096")  # fits the rules of the field


def test_arch_file_for_a_gpu(tmp_path):
    p = tmp_path / "h100-hbm3e.yaml"
    p.write_text("base: h100\nspec:\n  bandwidth_gbs: {value: 4800, source: HBM3e guess}\n")
    t = configure_target(get_target("h100"), {"arch": str(p), "set": ["mem_gb=141"]})
    assert t.spec.mem_bandwidth == 4.8e12 and t.spec.mem_bytes == 141e9
    assert "HBM3e guess" in t.spec.sources["bandwidth_gbs"]
    p.write_text("base: a100\nspec: {mem_gb: 40}\n")
    with pytest.raises(TargetError, match="base 'a100' differs from --target h100"):
        configure_target(get_target("h100"), {"arch": str(p)})
    p.write_text("kind: cpu\n")  # a user file cannot change the kind
    with pytest.raises(TargetError, match="unknown field"):
        configure_target(get_target("h100"), {"arch": str(p)})
    with pytest.raises(TargetError, match="not found"):
        configure_target(get_target("h100"), {"arch": str(tmp_path / "nope.yaml")})


def test_ref_has_no_spec_to_override():
    with pytest.raises(TargetError, match="no hardware spec"):
        get_target("ref").with_overrides(["bandwidth_gbs=1"])


def test_parse_override_values():
    assert parse_override("bandwidth_gbs=4800") == ("bandwidth_gbs", 4800.0)
    assert parse_override(" peak_tflops.i8 = 2e3") == ("peak_tflops.i8", 2000.0)


def test_file_numbers_yaml_leaves_as_strings(tmp_path):
    p = tmp_path / "t.yaml"
    p.write_text("base: h100\nspec: {bandwidth_gbs: 4.8e3}\n")  # YAML 1.1: a string
    t = configure_target(get_target("h100"), {"arch": str(p)})
    assert t.spec.mem_bandwidth == 4.8e12


def test_host_spec_has_sources(monkeypatch, tmp_path):
    from llmc.targets import host

    monkeypatch.setenv("LLMC_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("LLMC_HOST_SPEC", raising=False)
    rec = {"cpu": "test", "cores": 1, "threads": 1, "read_bytes_per_s": 2e10, "measured": "now"}
    rec["llc"] = {"bytes": 0}  # no LLC probe in a test
    monkeypatch.setattr(host, "_cache_file", lambda key: tmp_path / "s.json")
    (tmp_path / "s.json").write_text(json.dumps(rec))
    s = resolve_spec(get_target("cpu"))
    assert s.mem_bandwidth == 2e10 and "this host" in s.sources["bandwidth_gbs"]
    assert s.peak("f32") > 0 and math.isfinite(s.peak("i8"))


# ---------------------------------------------------------------------------------------- CLI


def test_compile_dry_run_reflects_the_override(capsys):
    args = ["compile", "tiny", "--target", "h100", "--dry-run", "--json"]
    assert main([*args, "--set", "bandwidth_gbs=4800"]) == 0
    rf = json.loads(capsys.readouterr().out)["roofline"]
    assert rf["mem_bandwidth"] == 4.8e12 and "bandwidth_gbs=4800" in rf["spec_source"]
    assert main([*args, "--set", "bandwidth_gbz=4800"]) != 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bandwidth_gbz" in err and "bandwidth_gbs" in err


def test_roofline_reflects_the_override(capsys):
    base = ["roofline", "llama2-7b", "--target", "h100", "--json"]
    assert main(base) == 0
    plain = json.loads(capsys.readouterr().out)
    assert main([*base, "--set", "bandwidth_gbs=4800"]) == 0
    fast = json.loads(capsys.readouterr().out)
    assert fast["spec"]["mem_bandwidth"] == 4.8e12
    # decode of a 7B model is memory-bound: the time scales with 1/bandwidth
    d0, d1 = plain["totals"]["decode"]["ms_per_token"], fast["totals"]["decode"]["ms_per_token"]
    assert d1 < d0 and d0 / d1 == pytest.approx(4800 / 3350, rel=0.05)


def test_study_sweep_varies_a_gpu_spec_key(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LLMC_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "s"
    args = ["study", "sweep", "llama2-7b", "--target", "h100", "--no-quality", "-j", "1"]
    assert main([*args, "--vary", "bandwidth_gbs=3350,4800", "-o", str(out)]) == 0
    rows = json.loads((out / "points.json").read_text())
    rows = rows["points"] if isinstance(rows, dict) else rows
    speed = {float(r["hw.bandwidth_gbs"]): r["decode_tokens_per_s"] for r in rows}
    assert speed[4800] > speed[3350]
    capsys.readouterr()
    assert main([*args, "--vary", "bandwidth_gbs=1,-2", "-o", str(tmp_path / "bad")]) != 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bandwidth_gbs=-2" in err
    assert not (tmp_path / "bad").exists()
