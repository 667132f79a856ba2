"""Architecture descriptions: built-in boards, YAML files, overrides, and refusal of the impossible."""

from __future__ import annotations

import pytest

from llmc.fpga.arch import FIELDS, ArchError, builtin_names, load_arch


@pytest.mark.parametrize("name", ["u280", "vhk158"])
def test_builtin_boards_load_with_a_source_for_every_field(name):
    a = load_arch(name)
    assert a.name == name
    for f in FIELDS:
        src = a.source(f.key)
        assert src != "unspecified", f.key
        assert any(tag in src for tag in ("data sheet", "FlightLLM paper", "assumption", "llmc")), (
            f.key,
            src,
        )
    assert a.dsps_needed() <= a.dsp.total


def test_published_vhk158_settings():
    a = load_arch("vhk158")
    assert a.clock_mhz == 225 and a.slrs == 4
    assert a.hbm.bandwidth_gbs == 819.2 and a.hbm.channels == 32 and a.hbm.channel_mb == 256
    assert (a.hbm.eff_same, a.hbm.eff_cross) == (0.7, 0.35)
    assert a.mm_unit == (2, 16, 128) and a.mv_unit == (64, 16, 1)
    assert a.sfu_width == 16 and a.sparse_block == 16 and a.mask_block == 64
    assert a.max_tokens == 2048 and a.sparse_nnz == (2, 4, 8, 16)


def test_u280_data_sheet_values():
    a = load_arch("u280")
    assert a.dsp.total == 9024 and a.hbm.bandwidth_gbs == 460 and a.slrs == 3
    assert a.hbm.capacity_bytes == 8 * 2**30
    assert a.ddr.bandwidth_gbs == 38.4 and a.ddr.capacity_gb == 32


def test_overrides_and_sources():
    a = load_arch(
        "u280", ["hbm.bandwidth_gbs=920", "mv_unit=[128, 16, 1]", "dsp.sparse_chain=false"]
    )
    assert a.hbm.bandwidth_gbs == 920.0 and a.mv_unit == (128, 16, 1) and not a.dsp.sparse_chain
    assert a.source("hbm.bandwidth_gbs").startswith("override")
    b = a.replace(["clock_mhz=300"])
    assert b.clock_mhz == 300 and b.hbm.bandwidth_gbs == 920.0


@pytest.mark.parametrize(
    "override, field",
    [
        ("dsp.total=0", "dsp.total"),
        ("dsp.total=100", "dsp.total"),  # fewer DSPs than the units need
        ("hbm.bandwidth_gbs=-1", "hbm.bandwidth_gbs"),
        ("hbm.eff_same=1.5", "hbm.eff_same"),
        ("buffers.weight_kb=1", "buffers.weight_kb"),
        ("buffers.kv_kb=2", "buffers.kv_kb"),
        ("buffers.act_kb=0.01", "buffers.act_kb"),
        ("sparse_nnz=[3, 16]", "sparse_nnz"),
        ("mm_unit=[2, 16]", "mm_unit"),
        ("clock_mhz=fast", "clock_mhz"),
        ("decode_bucket=17", "decode_bucket"),
        ("onchip_mb=1", "onchip_mb"),
    ],
)
def test_impossible_values_are_refused_naming_the_field(override, field):
    with pytest.raises(ArchError, match=f"'{field}'"):
        load_arch("u280", [override])


def test_unknown_override_key_suggests():
    with pytest.raises(ArchError, match="did you mean 'hbm.bandwidth_gbs'"):
        load_arch("u280", ["hbm.bandwith_gbs=1"])
    with pytest.raises(ArchError, match="KEY=VALUE"):
        load_arch("u280", ["clock_mhz"])


def test_user_file_with_base(tmp_path):
    p = tmp_path / "mine.yaml"
    p.write_text(
        "base: vhk158\nname: big\nhbm:\n  bandwidth_gbs: {value: 1638.4, source: 'what if'}\n"
    )
    a = load_arch(str(p))
    assert a.name == "big" and a.hbm.bandwidth_gbs == 1638.4 and a.clock_mhz == 225
    assert a.source("hbm.bandwidth_gbs") == "what if"


def test_bad_files(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("clock_mhz: [1, 2\n")
    with pytest.raises(ArchError, match="not valid YAML"):
        load_arch(str(p))
    p.write_text("base: u280\ndsp:\n  totl: 5\n")
    with pytest.raises(ArchError, match="unknown field 'dsp.totl'.*dsp.total"):
        load_arch(str(p))
    p.write_text("base: u280\ndsp:\n  total: {value: 0, source: x}\n")
    with pytest.raises(ArchError, match=r"bad.yaml: field 'dsp.total' = 0 is impossible"):
        load_arch(str(p))
    with pytest.raises(ArchError, match="unknown FPGA architecture 'u28'.*did you mean 'u280'"):
        load_arch("u28")
    with pytest.raises(ArchError, match="not found"):
        load_arch(str(tmp_path / "missing.yaml"))


def test_registry_targets():
    from llmc.targets import get_target

    assert set(builtin_names()) >= {"u280", "vhk158"}
    t = get_target("vhk158")
    assert t.kind == "fpga" and t.extra["arch"].name == "vhk158"
    assert t.spec.mem_bandwidth == 819.2e9


def test_docs_list_every_field():
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "fpga.md").read_text()
    missing = [f.key for f in FIELDS if f.key not in ("description", "board")]
    missing = [k for k in missing if f"`{k}`" not in text and k not in ("power_w", "price_usd")]
    assert not missing, f"docs/fpga.md's field table lacks {missing}"
