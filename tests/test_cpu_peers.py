"""bench/cpu_peers.py's pure parts: arguments, roofline arithmetic, summaries, the JSON schema.

Nothing here builds the peers' venv, compiles a model or needs llama.cpp or the network."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cp():
    sys.path.insert(0, str(ROOT / "bench"))
    spec = importlib.util.spec_from_file_location("cpu_peers", ROOT / "bench" / "cpu_peers.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_defaults(cp):
    a = cp.parse_args([])
    assert (a.prompt, a.tokens, a.threads, a.rounds) == (32, 128, 2, 5)
    assert a.pairs == list(cp.PAIRS)
    assert a.model["hidden_size"] == 768 and a.out.endswith("bench/cpu_peers.json")


def test_quick_is_small_and_separate(cp):
    a = cp.parse_args(["--quick", "--only", "q4"])
    assert a.rounds == 1 and a.tokens == 8 and a.prompt == 8
    assert a.model["num_hidden_layers"] == 2 and a.pairs == ["q4"]
    assert not a.out.endswith("bench/cpu_peers.json")  # never overwrites the recorded run
    assert cp.parse_args(["--quick", "--rounds", "3"]).rounds == 3
    # every quantized GGUF row is whole blocks of 32
    assert a.model["hidden_size"] % 32 == 0 and a.model["intermediate_size"] % 32 == 0


@pytest.mark.parametrize(
    "argv, word",
    [
        (["--only", "f32,bogus"], "--only"),
        (["--only", ","], "--only"),
        (["--rounds", "0"], "--rounds"),
        (["--tokens", "1"], "--tokens"),
        (["--prompt", "0"], "--prompt"),
        (["--threads", "0"], "--threads"),
    ],
)
def test_argument_errors(cp, argv, word, capsys):
    with pytest.raises(cp.UsageError, match=word):
        cp.parse_args(argv)
    assert cp.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and word in err[0]


def test_peers_venv_is_never_the_project_venv(cp, tmp_path):
    with pytest.raises(cp.UsageError, match="never the project"):
        cp.ensure_peers_venv(ROOT / ".venv")


def test_roofline_arithmetic(cp):
    # 100 MB a token at 200 tok/s is 20 GB/s: half of 40 GB/s
    assert cp.roofline_pct(100e6, 200.0, 40e9) == pytest.approx(50.0)
    with pytest.raises(ValueError):
        cp.roofline_pct(100e6, 0.0, 40e9)
    with pytest.raises(ValueError):
        cp.roofline_pct(100e6, 10.0, 0.0)


def test_decode_bytes_reads_one_embedding_row(cp):
    ts = [("emb", 32000 * 768 * 4, 32000), ("w", 1000, 10), ("norm", 3072, 1)]
    assert cp.decode_bytes(ts, "emb") == 768 * 4 + 1000 + 3072
    assert cp.decode_bytes(ts, "other") == sum(t[1] for t in ts)


def test_summarize_and_verdict(cp):
    s = cp.summarize([10.0, 12.0, 11.0])
    assert s["median"] == 11.0 and s["min"] == 10.0 and s["max"] == 12.0
    assert s["spread_pct"] == pytest.approx(18.2)
    with pytest.raises(ValueError):
        cp.summarize([])
    assert cp.verdict(1.2, 1.1) == {"ratio": 1.2, "target": 1.1, "met": True}
    v = cp.verdict(0.55, 1.1)
    assert not v["met"] and v["miss_pct"] == pytest.approx(100.0)  # needs 2x to get there


def _doc(cp):
    eng = {
        "llmc-f32": {"decode": [60.0, 66.0], "prefill": [900.0, 1000.0], "bytes_per_token": 440e6},
        "llama.cpp-f32": {
            "decode": [60.0, 60.0],
            "prefill": [800.0, 800.0],
            "bytes_per_token": 440e6,
        },
    }
    pr = cp.pair_result(eng, "llama.cpp-f32", [("llmc-f32", 1.1)], 40e9)
    pr["load_average_before"], pr["load_average_after"] = [1.0, 1.0, 1.0], [1.0, 1.0, 1.0]
    return {
        "benchmark": "x",
        "command": "python bench/cpu_peers.py",
        "date": "2026-01-01T00:00:00+00:00",
        "commit": "abc",
        "machine": {},
        "model": {},
        "settings": {},
        "read_bandwidth_gbs": 40.0,
        "load_average_before": [1.0, 1.0, 1.0],
        "load_average_after": [1.0, 1.0, 1.0],
        "pairs": {"f32": pr},
    }


def test_pair_result_and_schema(cp):
    doc = _doc(cp)
    cp.check_result(doc)
    e = doc["pairs"]["f32"]["engines"]["llmc-f32"]
    assert e["decode_tokens_per_s"]["median"] == 63.0
    assert e["pct_of_roofline"] == pytest.approx(100 * 440e6 * 63 / 40e9, abs=0.1)
    assert e["decode_ratio_vs_baseline"] == pytest.approx(1.05)
    t = doc["pairs"]["f32"]["targets"][0]
    assert not t["met"] and t["miss_pct"] == pytest.approx(4.8)
    table = cp.markdown_table(doc)
    assert "missed by 4.8%" in table and "| f32 | llama.cpp-f32 |" in table


def test_loaded_pair_is_no_verdict(cp):
    """A pair run above cores + 1 of load average gives its ratios but no met/missed verdict."""
    doc = _doc(cp)
    doc["machine"] = {"cores": 2}
    assert not cp.loaded(doc, doc["pairs"]["f32"])
    doc["pairs"]["f32"]["load_average_after"] = [4.0, 3.0, 2.0]
    assert cp.loaded(doc, doc["pairs"]["f32"])
    table = cp.markdown_table(doc)
    assert "no verdict (load 4.0)" in table and "missed" not in table and "1.05x" in table


def test_llc_roofline_when_the_model_fits(cp):
    """Bytes per token within the LLC: a second % against the LLC's bandwidth; the DRAM one stays."""
    eng = {
        "llmc-q4": {"decode": [100.0], "prefill": [900.0], "bytes_per_token": 62e6},
        "llama.cpp-f32": {"decode": [50.0], "prefill": [800.0], "bytes_per_token": 440e6},
    }
    pr = cp.pair_result(eng, "llama.cpp-f32", [], 40e9, (300 * 2**20, 100e9))
    q4, f32 = pr["engines"]["llmc-q4"], pr["engines"]["llama.cpp-f32"]
    assert q4["pct_of_roofline"] == pytest.approx(15.5) and q4["roofline_level"] == "LLC"
    assert q4["pct_of_llc_roofline"] == pytest.approx(6.2)
    # 440 MB over a 300 MiB cache: 300 MiB at 100 GB/s, the rest at DRAM's 40 GB/s
    assert f32["roofline_level"] == "LLC+DRAM" and f32["pct_of_roofline"] == pytest.approx(55.0)
    split = 440e6 / (300 * 2**20 / 100e9 + (440e6 - 300 * 2**20) / 40e9)
    assert f32["pct_of_llc_roofline"] == pytest.approx(100 * 440e6 * 50 / split, abs=0.05)
    assert f32["pct_of_llc_roofline"] < f32["pct_of_roofline"]
    assert (
        "pct_of_llc_roofline"
        not in cp.pair_result(eng, "llama.cpp-f32", [], 40e9)["engines"]["llmc-q4"]
    )
    doc = _doc(cp)
    doc["pairs"]["q4"] = {**pr, "load_average_before": [1.0], "load_average_after": [1.0]}
    cp.check_result(doc)
    table = cp.markdown_table(doc)
    assert "| 6% |" in table and "| — |" in table
    q4["pct_of_llc_roofline"] = 0
    with pytest.raises(ValueError, match="pct_of_llc_roofline"):
        cp.check_result(doc)


def test_rederive_changes_only_the_cache_roofline(cp, tmp_path):
    """``--rederive``: a stored run's cache roofline fields, derived again from its own figures;
    the measurements, the DRAM % and the verdicts stay; a broken file is one line, exit 2."""
    import copy

    doc = _doc(cp)
    doc["llc"] = {"effective_bytes": 300 * 2**20, "read_bandwidth_gbs": 100.0}
    before = copy.deepcopy(doc)
    path = tmp_path / "peers.json"
    path.write_text(json.dumps(doc))
    assert cp.main(["--rederive", str(path)]) == 0
    after = json.loads(path.read_text())
    assert after["rederived"]["fields"].startswith("roofline_level, pct_of_llc_roofline")
    for n, r in after["pairs"]["f32"]["engines"].items():
        old = before["pairs"]["f32"]["engines"][n]
        assert r["roofline_level"] == "LLC+DRAM" and old["roofline_level"] == "DRAM"
        assert 0 < r["pct_of_llc_roofline"] < r["pct_of_roofline"] == old["pct_of_roofline"]
        assert {
            k: v for k, v in r.items() if k not in ("roofline_level", "pct_of_llc_roofline")
        } == {k: v for k, v in old.items() if k != "roofline_level"}
    assert after["pairs"]["f32"]["targets"] == before["pairs"]["f32"]["targets"]
    path.write_text("{")
    assert cp.main(["--rederive", str(path)]) == 2
    assert path.read_text() == "{"


@pytest.mark.parametrize(
    "break_it, where",
    [
        (lambda d: d.pop("read_bandwidth_gbs"), "read_bandwidth_gbs"),
        (lambda d: d["pairs"]["f32"].pop("load_average_after"), "pairs.f32"),
        (lambda d: d["pairs"]["f32"].update(baseline="nope"), "baseline"),
        (
            lambda d: d["pairs"]["f32"]["engines"]["llmc-f32"].pop("bytes_per_token"),
            "pairs.f32.llmc-f32",
        ),
        (
            lambda d: d["pairs"]["f32"]["engines"]["llmc-f32"].update(pct_of_roofline=0),
            "pct_of_roofline",
        ),
        (lambda d: d["pairs"]["f32"]["targets"].append({"engine": "x"}), "targets"),
    ],
)
def test_schema_errors(cp, break_it, where):
    doc = _doc(cp)
    break_it(doc)
    with pytest.raises(ValueError, match=where):
        cp.check_result(doc)


def test_recorded_result_matches_schema(cp):
    """The committed bench/cpu_peers.json passes the schema the script checks before writing."""
    import json

    path = ROOT / "bench" / "cpu_peers.json"
    if not path.is_file():
        pytest.skip("no recorded run")
    doc = json.loads(path.read_text())
    cp.check_result(doc)
    assert set(doc["pairs"]) <= set(cp.PAIRS)
    assert doc["settings"]["threads"] == 2 and doc["model"]["hidden_size"] == 768
    for p in doc["pairs"].values():
        for e in p["engines"].values():
            assert len(e["decode_tokens_per_s"]["samples"]) == doc["settings"]["rounds"]
