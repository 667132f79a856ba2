"""`llmc simulate` and `llmc compile --target u280|vhk158`: the JSON contract and bad input."""

from __future__ import annotations

import json

import pytest

from tests.test_cli import assert_one_line_error, run_cli

# tiny is read and traced once for the file (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("tiny_loads_cached")

FIELDS = (
    "prefill_ms",
    "decode_ms_per_token",
    "decode_tokens_per_s",
    "dsp_utilization",
    "hbm_bandwidth_utilization",
    "instruction_bytes",
)


@pytest.mark.parametrize("target", ["u280", "vhk158"])
def test_simulate_llama2_7b_json(capsys, target):
    rc, out, err = run_cli(
        capsys,
        "simulate",
        "llama2-7b",
        "--target",
        target,
        "--passes",
        "magnitude:pattern=4:16,rtn:bits=8:group=0",
        "--json",
    )
    assert rc == 0, err
    d = json.loads(out)
    for f in FIELDS:
        assert isinstance(d[f], (int, float)) and d[f] > 0, f
    assert d["prefill_tokens"] == 128 and d["decode_tokens"] == 512
    assert 0 < d["dsp_utilization"] < 1 and 0 < d["hbm_bandwidth_utilization"] < 1
    assert abs(d["decode_tokens_per_s"] * d["decode_ms_per_token"] - 1e3) < 1e-6
    # the LM head: rtn's head=true quantizes it at 8 bits (not pruned: magnitude excludes it)
    assert d["memory"]["formats"] == {"int8 g0": 1, "int8 4:16 g0": 224}
    assert d["memory"]["weights_in_ddr_gib"] == 0
    assert d["instruction_storage"]["ratio"] > 100  # length buckets: >100x less storage
    assert any(n.startswith("layer folding: 33 of 33") for n in d["notes"])
    assert [p["pass"] for p in d["passes"]] == ["magnitude", "rtn"]


def test_simulate_human_summary(capsys):
    rc, out, _ = run_cli(capsys, "simulate", "tiny", "--prefill", "20", "--decode", "8")
    assert rc == 0
    assert "tiny on u280: prompt 20, generate 8" in out and "tokens/s" in out


def test_simulate_refuses_non_fpga_target(capsys):
    rc, _, err = run_cli(capsys, "simulate", "tiny", "--target", "cpu")
    assert_one_line_error(rc, err, "FPGA target", "cpu")


def test_simulate_impossible_arch_names_the_field(capsys):
    rc, _, err = run_cli(capsys, "simulate", "tiny", "--set", "dsp.total=0")
    assert_one_line_error(rc, err, "'dsp.total'")
    rc, _, err = run_cli(capsys, "simulate", "tiny", "--set", "hbm.bandwidth_gbs=-5")
    assert_one_line_error(rc, err, "'hbm.bandwidth_gbs'", "-5")
    rc, _, err = run_cli(capsys, "simulate", "tiny", "--set", "buffers.kv_kb=1")
    assert_one_line_error(rc, err, "'buffers.kv_kb'", "too small")


def test_simulate_too_large_model_reports_numbers(capsys):
    rc, _, err = run_cli(
        capsys, "simulate", "llama2-13b", "--target", "u280", "--set", "ddr.capacity_gb=0"
    )
    assert_one_line_error(rc, err, "GiB", "HBM")


def test_simulate_too_many_tokens(capsys):
    rc, _, err = run_cli(capsys, "simulate", "tiny", "--prefill", "2000", "--decode", "100")
    assert_one_line_error(rc, err, "max_tokens")
