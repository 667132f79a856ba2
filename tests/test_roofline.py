"""``llmc roofline``: per-layer, per-op-group rooflines (llmc/codesign/roofline.py)."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch

from llmc.cli import main
from llmc.codesign.roofline import Scenario, analyze, pruned_lengths
from llmc.frontends import zoo
from llmc.ir.params import Param, QuantSpec, SparsitySpec, StorageFormat
from llmc.ir.types import TensorType
from llmc.targets import get_target, resolve_spec

# tiny is read and traced once for the file (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("tiny_loads_cached")

H, FFN, LAYERS = 4096, 11008, 32  # LLaMA2-7B


@pytest.fixture(scope="module")
def llama7b():
    return zoo.build("llama2-7b")


def a100():
    return resolve_spec(get_target("a100"))


def test_linears_match_closed_form(llama7b) -> None:
    """Every projection of LLaMA2-7B: 2*in*out FLOPs per row, weights + activations in bytes
    (the formulas LLM-Viewer uses: bench/roofline_llmviewer.py compares every group)."""
    s, b = 256, 2
    rep = analyze(llama7b, a100(), Scenario(batch=b, prompt=s, decode=0))
    shapes = {
        "attn.q_proj": (H, H),
        "attn.o_proj": (H, H),
        "ffn.gate_proj": (H, FFN),
        "ffn.down_proj": (FFN, H),
    }
    for stage, rows in (("prefill", b * s), ("decode", b)):
        groups = {g.group: g for g in rep.groups(stage)}
        for name, (ic, oc) in shapes.items():
            g = groups[name]
            assert g.flops == 2 * ic * oc * rows * LAYERS
            assert g.bytes == (ic * oc + ic * rows + oc * rows) * 2 * LAYERS
        # generation's prefill computes the head for the last row of each sequence only
        assert groups["lm_head"].flops == 2 * H * 32000 * b
    layers = {r.layer for r in rep.rows if r.stage == "decode"}
    assert layers == {None, *range(LAYERS)}
    for stage in ("prefill", "decode"):
        rows = [r for r in rep.rows if r.stage == stage]
        assert math.isclose(rep.totals[stage]["time_ms"], sum(r.time_ms for r in rows))
    # batch 1 decode is memory-bound everywhere; a long prefill's projections are compute-bound
    assert all(g.bound == "memory" for g in rep.groups("decode"))
    big = analyze(llama7b, a100(), Scenario(prompt=2048, decode=0))
    assert {g.group: g.bound for g in big.groups("prefill")}["ffn.up_proj"] == "compute"


def test_compressed_weights_move_fewer_bytes(llama7b) -> None:
    from llmc.compile import run_passes

    def decode_bytes(passes: str) -> float:
        g = zoo.build("llama2-7b")
        if passes:
            run_passes(g, passes, None, target="a100", options={})
        rep = analyze(g, a100(), Scenario(prompt=128, decode=0))
        return rep.totals["decode"]["weight_bytes"]

    dense = decode_bytes("")
    sparse = decode_bytes("magnitude:pattern=2:4")
    int4 = decode_bytes("rtn:bits=4:group=128")
    both = decode_bytes("magnitude:pattern=2:4,rtn:bits=4:group=128")
    assert both < int4 < sparse < dense
    # 2:4 on f16: half the values plus a 2-bit position each (the head stays dense)
    assert sparse / dense == pytest.approx((0.5 + 0.5 * 2 / 16), rel=0.05)


def test_storage_bytes_of_nm_formats() -> None:
    t = TensorType((8, 64), "f16")
    w = torch.zeros(8, 64)
    dense = Param("w", t, StorageFormat(), {"value": w})
    assert dense.storage_bytes() == 8 * 64 * 2
    nm = Param("w", t, StorageFormat(sparsity=SparsitySpec("nm", 2, 4, 0.5)), {"value": w})
    assert nm.storage_bytes() == 8 * 32 * 2 + 8 * 32 * 2 / 8
    nm816 = Param("w", t, StorageFormat(sparsity=SparsitySpec("nm", 8, 16, 0.5)), {"value": w})
    assert nm816.storage_bytes() == 8 * 32 * 2 + 8 * 32 * 4 / 8
    unstructured = Param(
        "w", t, StorageFormat(sparsity=SparsitySpec("unstructured", density=0.5)), {"value": w}
    )
    assert unstructured.storage_bytes() == dense.storage_bytes()
    q = Param(
        "w",
        t,
        StorageFormat(QuantSpec(4, 32), SparsitySpec("nm", 2, 4, 0.5)),
        {"qvalue": torch.zeros(8, 64, dtype=torch.int8), "scale": torch.ones(8, 2)},
    )
    # kept codes + 2-bit positions + the scales at their real dtype (f32: 4 bytes each)
    assert q.storage_bytes() == 8 * 32 * 0.5 + 8 * 32 * 2 / 8 + 8 * 2 * 4
    q.format = StorageFormat(QuantSpec(4, 32, scale_dtype="f16"), q.format.sparsity)
    q.data["scale"] = q.data["scale"].half()  # scale_dtype=f16: 2 bytes each
    assert q.storage_bytes() == 8 * 32 * 0.5 + 8 * 32 * 2 / 8 + 8 * 2 * 2


def test_kv_and_activation_bits(llama7b) -> None:
    spec = a100()
    base = analyze(llama7b, spec, Scenario(prompt=1024, decode=0))
    kv8 = analyze(llama7b, spec, Scenario(prompt=1024, decode=0, kv_bits=8))
    att = {g.group: g for g in base.groups("decode")}["attention"]
    att8 = {g.group: g for g in kv8.groups("decode")}["attention"]
    assert att8.kv_bytes == pytest.approx(att.kv_bytes / 2)
    assert kv8.kv_cache["bytes"] == pytest.approx(base.kv_cache["bytes"] / 2)
    # 32 layers x K and V x 1024 tokens x 4096 x 2 bytes
    assert base.kv_cache["bytes"] == LAYERS * 2 * 1024 * H * 2
    a8 = analyze(llama7b, spec, Scenario(prompt=1024, decode=0, act_bits=8))
    g8 = {g.group: g for g in a8.groups("prefill")}["ffn.up_proj"]
    assert g8.peak_dtype == "i8" and g8.peak_flops == spec.peak("i8")
    g16 = {g.group: g for g in base.groups("prefill")}["ffn.up_proj"]
    assert g8.time_ms < g16.time_ms


def test_bad_scenarios_are_one_line() -> None:
    from llmc.codesign.roofline import RooflineError

    for kw in ({"batch": 0}, {"prompt": 0}, {"decode": -1}, {"kv_bits": 3}, {"skip_rate": 1.5}):
        with pytest.raises(RooflineError):
            Scenario(**kw)


@pytest.fixture(scope="module")
def tiny_adaptive():
    from llmc.compile import load, run_passes

    skip = load("tiny").graph
    run_passes(skip, "ffn-skip:ratio=0.25", None, target="ref", options={})
    prune = load("tiny").graph
    run_passes(prune, "token-prune:average=0.5", None, target="ref", options={})
    return load("tiny").graph, skip, prune


def test_ffn_skip_rate_scales_decode_ffn(tiny_adaptive) -> None:
    dense, skip, _ = tiny_adaptive
    spec = resolve_spec(get_target("h100"))

    def ffn(g, rate, stage="decode"):
        rep = analyze(g, spec, Scenario(prompt=64, decode=16, skip_rate=rate))
        return sum(r.weight_bytes for r in rep.groups(stage) if r.group.startswith("ffn."))

    full = ffn(dense, None)
    assert full > 0
    assert ffn(skip, None) == pytest.approx(full)  # no rate: nothing skipped (upper bound)
    assert ffn(skip, 0.0) == pytest.approx(full)
    # tiny: 2 of its 4 FFN blocks are skippable; a rate counts skipped blocks over all 4
    per_block = full / 4
    assert ffn(skip, 0.25) == pytest.approx(full - per_block)
    assert ffn(skip, 0.5) == pytest.approx(full - 2 * per_block)
    from llmc.codesign.roofline import RooflineError

    with pytest.raises(RooflineError, match="at most 2 of its 4"):
        ffn(skip, 0.75)
    with pytest.raises(RooflineError, match="skips no FFN block"):
        ffn(dense, 0.5)
    assert ffn(skip, 0.5, "prefill") == pytest.approx(ffn(dense, None, "prefill"))  # prompt


def test_token_prune_lengths(tiny_adaptive) -> None:
    dense, _, prune = tiny_adaptive
    spec = resolve_spec(get_target("h100"))
    lengths = pruned_lengths(prune, 200)
    kept = {k: v for k, v in lengths.items() if k.startswith("kept_")}
    assert kept and all(v < 200 for v in kept.values())
    rd = analyze(dense, spec, Scenario(prompt=200, decode=8))
    rp = analyze(prune, spec, Scenario(prompt=200, decode=8))
    assert rp.totals["prefill"]["flops"] < rd.totals["prefill"]["flops"]
    assert rp.totals["decode"]["kv_bytes"] < rd.totals["decode"]["kv_bytes"]
    assert rp.kv_cache["bytes"] < rd.kv_cache["bytes"]
    # layer 0 runs every prompt row in both
    l0 = lambda rep: sum(  # noqa: E731
        r.flops for r in rep.rows if r.stage == "prefill" and r.layer == 0 and r.group != "prune"
    )
    assert l0(rp) == pytest.approx(l0(rd))


def test_cli_writes_csv_plot_json(tmp_path, capsys) -> None:
    c, p = tmp_path / "r.csv", tmp_path / "r.png"
    rc = main(
        [
            "roofline",
            "llama2-7b",
            "--target",
            "h100",
            "--prompt",
            "256",
            "--csv",
            str(c),
            "--plot",
            str(p),
            "--json",
        ]
    )
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["target"] == "h100" and set(out["groups"]) == {"prefill", "decode"}
    rows = list(csv.DictReader(c.open()))
    assert {r["stage"] for r in rows} == {"prefill", "decode"}
    assert {r["layer"] for r in rows} >= {str(i) for i in range(32)}
    assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob(".llmc-*"))


def test_cli_fpga_has_simulator(capsys) -> None:
    rc = main(
        [
            "roofline",
            "llama2-7b",
            "--target",
            "vhk158",
            "--passes",
            "rtn:bits=8:group=0",
            "--prompt",
            "64",
            "--decode",
            "32",
            "--json",
        ]
    )
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    sim = out["simulator"]
    assert sim["decode_ms_per_token"] > 0 and sim["prefill_ms"] > 0
    # the cycle model never beats the roofline bound
    assert sim["decode_ms_per_token"] >= out["totals"]["decode"]["ms_per_token"] * 0.99


def test_cli_cpu_and_bad_input(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("LLMC_HOST_SPEC", "nominal")
    assert main(["roofline", "tiny", "--target", "cpu", "--prompt", "32", "--decode", "8"]) == 0
    assert "decode" in capsys.readouterr().out
    rc = main(["roofline", "tiny", "--target", "cpu", "--csv", str(tmp_path / "no" / "r.csv")])
    err = capsys.readouterr().err
    assert rc != 0 and err.count("\n") == 1 and "--csv" in err
    rc = main(["roofline", "tiny", "--target", "nosuch"])
    err = capsys.readouterr().err
    assert rc != 0 and err.count("\n") == 1 and "nosuch" in err
    rc = main(["roofline", "tiny", "--target", "cpu", "--batch", "0"])
    assert rc == 2 and capsys.readouterr().err.count("\n") == 1
    # the nominal cpu spec has no last-level cache figure: --memory-level llc is refused
    rc = main(["roofline", "tiny", "--target", "cpu", "--memory-level", "llc"])
    err = capsys.readouterr().err
    assert rc != 0 and err.count("\n") == 1 and "--memory-level llc" in err


def test_compile_report_has_layer_roofline(tmp_path) -> None:
    from llmc.compile import compile_model

    res = compile_model("tiny", target="u280", out=tmp_path / "a")
    rl = res.report["roofline_layers"]
    assert rl["target"] == "u280" and {r["stage"] for r in rl["rows"]} == {"prefill", "decode"}
    assert {r["layer"] for r in rl["rows"]} == {None, 0, 1, 2, 3}
    md = (tmp_path / "a" / "report.md").read_text()
    assert "## Roofline per layer" in md and "| decode | ffn.down_proj |" in md
    page = (tmp_path / "a" / "report.html").read_text()
    assert page.count("<svg") == 1 and page.count("<circle") > 10 and "<table>" in page
    dry = compile_model("llama2-7b", target="h100", dry_run=True)
    assert len(dry.report["roofline_layers"]["rows"]) > 32 * 10 * 2


@pytest.mark.parametrize(
    "passes,cls",
    [
        ("", "f32"),
        ("rtn:bits=8:group=0", "int8 weight-only"),
        ("rtn:bits=4:group=32", "int4 weight-only"),
        ("w8a8", "int8 x int8"),
        ("magnitude:pattern=2:4", "N:M sparse"),
    ],
)
def test_kernel_class_of_compressed_graphs(passes, cls) -> None:
    from llmc.codesign.roofline import kernel_class
    from llmc.compile import load, run_passes

    g = load("tiny").graph
    # the class depends on the formats the passes write, not on how much w8a8 calibrates
    run_passes(g, passes, None, target="cpu", options={"calib_samples": 2, "calib_seqlen": 32})
    assert kernel_class(g) == cls


def test_efficiency_calibration(tmp_path, capsys) -> None:
    """--efficiency divides each stage's roofline time by the factor measured for the graph's
    kernel class; the rows stay the roofline's, and bad files fail in one line naming the flag."""
    from llmc.codesign.roofline import calibrate, load_efficiency

    f = tmp_path / "eff.json"
    f.write_text(
        json.dumps(
            {
                "machine": "m",
                "date": "d",
                "efficiency_by_kernel_class": {
                    "f32": {"prefill": 0.5, "decode": 0.8},
                    "int8 weight-only": {"prefill": 0.25, "decode": 0.4},
                },
            }
        )
    )
    eff = load_efficiency(f)
    assert eff["source"].endswith("(m, d)")
    from llmc.compile import load

    g = load("tiny").graph
    rep = analyze(g, resolve_spec(get_target("cpu")), Scenario(prompt=64, decode=16))
    calibrate(rep, g, eff)
    c = rep.calibration
    assert c["kernel_class"] == "f32"
    assert math.isclose(c["prefill_ms"], rep.totals["prefill"]["time_ms"] / 0.5)
    assert math.isclose(c["decode_ms_per_token"], rep.totals["decode"]["time_ms"] / 0.8)
    assert math.isclose(c["request_ms"], c["prefill_ms"] + 16 * c["decode_ms_per_token"])
    assert "measured-efficiency estimate (f32 kernels" in rep.table()
    # a class the file does not have: a note, no estimate
    only_int8 = {"factors": {"int8 weight-only": {"prefill": 1.0, "decode": 1.0}}, "source": "x"}
    rep2 = analyze(g, resolve_spec(get_target("cpu")), Scenario(prompt=64, decode=16))
    calibrate(rep2, g, only_int8)
    assert rep2.calibration is None and any("no efficiency factor for f32" in n for n in rep2.notes)

    assert main(["roofline", "tiny", "--target", "cpu", "--efficiency", str(f), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["calibration"]["factors"] == {"prefill": 0.5, "decode": 0.8}
    for body, msg in (
        ("[]", "expected {kernel class"),
        ('{"f32": {"decode": 0.5}}', "needs prefill and decode"),
        ('{"f32": {"decode": 0, "prefill": 1}}', "must be a number in (0, 10)"),
        ('{"int3": {"decode": 1, "prefill": 1}}', "unknown kernel class 'int3'"),
        ("{", "not JSON"),
    ):
        f.write_text(body)
        assert main(["roofline", "tiny", "--target", "cpu", "--efficiency", str(f)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"llmc: error: --efficiency {f}") and msg in err, err
        assert len(err.splitlines()) == 1


def test_kernel_class_ignores_a_dense_tied_head() -> None:
    """GPT-2's tied lm_head stays f32 under rtn (most of the weight bytes): the class is still the
    quantized kernels' (bench/roofline_validate.py fits factors on such whole models)."""
    from llmc.codesign.roofline import kernel_class

    g = zoo.build("gpt2")
    big = max(g.params.values(), key=lambda p: p.type.numel())  # the tied embedding/head
    fmt = StorageFormat(quant=QuantSpec(bits=4, group=128))
    for p in g.params.values():
        if len(p.type.shape) == 2 and p is not big and "wte" not in p.name and "wpe" not in p.name:
            p.format = fmt
    assert kernel_class(g) == "int4 weight-only"


def test_moe_decode_reads_top_k_experts() -> None:
    """Mixtral-8x7B: a decode token reads the router and 2 of the 8 experts' weights per layer
    (the routed CPU kernels' traffic), both in ``bytes`` and in ``weight_bytes``; a 128-token
    prefill touches every expert."""
    g = zoo.build("mixtral-8x7b")
    rep = analyze(g, a100(), Scenario(prompt=128, decode=1))
    moe = [n for n in g.nodes if n.op == "moe"]
    root = g.root()
    router, gate_up, down = (root.param_of(v).storage_bytes() for v in moe[0].inputs[1:])
    for stage, frac in (("decode", 2 / 8), ("prefill", 1.0)):
        (row,) = [r for r in rep.groups(stage) if r.group == "moe"]  # summed over the layers
        assert row.ops == len(moe) == 32
        assert row.weight_bytes == pytest.approx(32 * (router + frac * (gate_up + down)))
        assert row.bytes_read >= row.weight_bytes


# ------------------------------------------------------------------ the last-level cache level


def _cached_spec(llc_mib: float, llc_gbs: float = 400.0):
    """A fake CPU spec: 40 GB/s DRAM, an LLC of ``llc_mib`` MiB read at ``llc_gbs`` GB/s."""
    from llmc.targets.spec import HardwareSpec

    peaks = {"f32": 2e11, "f16": 2e11, "bf16": 2e11, "i8": 8e11}
    return HardwareSpec(peaks, 40e9, 16e9, llc_bytes=llc_mib * 2**20, llc_bandwidth=llc_gbs * 1e9)


def test_memory_level_choice() -> None:
    from llmc.codesign.roofline import RooflineError, memory_level

    spec = _cached_spec(300)
    assert memory_level(spec, 100 * 2**20) == ("LLC", 400e9)
    assert memory_level(spec, 300 * 2**20) == ("LLC", 400e9)  # fits exactly
    # larger than the cache: the cache's 300 MiB at 400 GB/s, the rest at DRAM's 40 GB/s
    level, bw = memory_level(spec, 600 * 2**20)
    t = 300 * 2**20 / 400e9 + 300 * 2**20 / 40e9
    assert level == "LLC+DRAM" and bw == pytest.approx(600 * 2**20 / t)
    assert 40e9 < memory_level(spec, 301 * 2**20)[1] < 400e9
    # the blend runs from the cache's rate (just over its size) down to DRAM's (far over it)
    assert memory_level(spec, 301 * 2**20)[1] > memory_level(spec, 3000 * 2**20)[1] > 40e9
    assert memory_level(spec, 3e12)[1] == pytest.approx(40e9, rel=1e-3)
    assert memory_level(spec, 100 * 2**20, "dram") == ("DRAM", 40e9)
    assert memory_level(spec, 900 * 2**20, "llc") == ("LLC", 400e9)
    none = _cached_spec(0, 0)  # a spec without an LLC figure (every data-sheet target)
    assert memory_level(none, 1.0) == ("DRAM", 40e9)
    with pytest.raises(RooflineError, match="no last-level cache"):
        memory_level(none, 1.0, "llc")
    with pytest.raises(RooflineError, match="--memory-level"):
        memory_level(spec, 1.0, "l3")


def test_weights_that_fit_the_llc_read_at_its_bandwidth() -> None:
    g = zoo.build("gpt2")  # f32: ~475 MiB of weights
    big = analyze(g, _cached_spec(1000), Scenario(prompt=16, decode=8))
    small = analyze(g, _cached_spec(300), Scenario(prompt=16, decode=8))
    none = analyze(g, _cached_spec(0, 0), Scenario(prompt=16, decode=8))
    dram = analyze(g, _cached_spec(1000), Scenario(prompt=16, decode=8), memory_level="dram")
    # the working set is one decode step's reads: one row of the embedding table, not all of it
    ws = big.totals["decode"]["working_set_bytes"]
    assert ws == pytest.approx(sum(r.bytes_read for r in big.rows if r.stage == "decode"))
    assert ws < big.totals["weight_bytes"] + big.kv_cache["bytes"]
    for stage in ("prefill", "decode"):
        assert big.totals[stage]["memory_level"] == "LLC"
        assert small.totals[stage]["memory_level"] == "LLC+DRAM"
        assert dram.totals[stage]["memory_level"] == none.totals[stage]["memory_level"] == "DRAM"
        assert {r.bandwidth for r in big.rows if r.stage == stage} == {400e9}
    # GPT-2's decode is memory-bound: 10x the bandwidth, about 10x less time
    t_llc, t_dram = big.totals["decode"]["time_ms"], dram.totals["decode"]["time_ms"]
    assert t_llc < t_dram / 5
    # 300 of its ~475 MiB read from the cache: between the two
    t_split = small.totals["decode"]["time_ms"]
    assert t_llc < t_split < t_dram / 2
    assert any("memory level LLC:" in n for n in big.notes)
    assert any("memory level LLC+DRAM" in n for n in small.notes)
    assert "memory   LLC at 400.0 GB/s" in big.table()
    assert big.to_dict()["spec"]["llc_bandwidth"] == 400e9
    # a data-sheet target has no LLC figure: DRAM, as before
    assert (
        analyze(g, a100(), Scenario(prompt=16, decode=8)).totals["decode"]["memory_level"] == "DRAM"
    )
