"""The scripts in ``bench/`` still run against today's code: docs cite their commands and JSONs.

Every script imports and parses ``--help`` (catches import rot and argument-parser errors). The
kernel-level microbenches, which call the kernel builders directly (what rots when a kernel's
signature changes), run one small shape for one round, in this process (one TVM import for all;
each script checks nothing but that it runs, and writes its JSON to a temporary directory).
The model-level ones (compile ``tiny``, call the CLI, simulate LLaMA2-7B) run in ``slow`` tests.
``bench/cpu_prefill_gemm.py`` has its own test (tests/test_cpu_prefill_gemm_bench.py).
"""

from __future__ import annotations

import importlib
import json
import os
import runpy
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from llmc.backends.cpu.pipeline import kernel_isa

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
SCRIPTS = sorted(p.stem for p in BENCH.glob("*.py") if not p.stem.startswith("_"))
VNNI = pytest.mark.skipif(kernel_isa() != "avx512_vnni", reason="host CPU has no AVX-512 VNNI")


@pytest.fixture
def bench_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """``bench/`` importable (the scripts import ``_common`` and each other), as when run."""
    monkeypatch.syspath_prepend(str(BENCH))


def _script(name: str) -> ModuleType:
    return importlib.import_module(name)


def test_every_script_is_listed() -> None:
    assert "cpu_quant_decode" in SCRIPTS and len(SCRIPTS) >= 30


@pytest.mark.parametrize("name", SCRIPTS)
def test_help(name: str, bench_path: None, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """``python bench/NAME.py --help`` prints usage and exits 0, running nothing."""
    monkeypatch.setattr(sys, "argv", [str(BENCH / f"{name}.py"), "--help"])
    with pytest.raises(SystemExit) as e:
        runpy.run_path(str(BENCH / f"{name}.py"), run_name="__main__")
    assert e.value.code in (0, None)
    assert "usage:" in capsys.readouterr().out


@VNNI
def test_cpu_quant_decode_smoke(bench_path: None, tmp_path: Path) -> None:
    out = tmp_path / "q.json"
    # one variant per kernel builder the script calls
    variants = "rtn4_portable,rtn4_vnni1,rtn8_portable,rtn8_vnni3,w8a8_portable,w8a8_vnni"
    variants += ",rtn4g32_a8_f16,rtn8g32_vnni3"
    argv = ["--models", "smoke", "--variants", variants, "--repeats", "1", "--tokens", "1"]
    assert _script("cpu_quant_decode").main([*argv, "--out", str(out)]) == 0
    res = json.loads(out.read_text())["results"]["smoke"]
    assert set(res["variants"]) == set(variants.split(","))


@pytest.mark.skipif(kernel_isa() == "portable", reason="host CPU has no AVX2")
def test_cpu_avx2_decode_smoke(bench_path: None, tmp_path: Path) -> None:
    out = tmp_path / "a.json"
    mod = _script("cpu_avx2_decode")
    host_target = _script("cpu_quant_decode")._target
    argv = ["--models", "smoke", "--repeats", "1", "--tokens", "1", "--out", str(out)]
    assert mod.main(argv) == 0
    assert _script("cpu_quant_decode")._target is host_target  # restored for the other scripts
    res = json.loads(out.read_text())["results"]["smoke"]
    assert set(res["variants"]) == set(mod.VARIANTS)


@VNNI
def test_cpu_w8a8_decode_smoke(bench_path: None, tmp_path: Path) -> None:
    out = tmp_path / "w.json"
    _script("cpu_w8a8_decode").main(["--smoke", "--repeats", "1", "--tokens", "1", "-o", str(out)])
    assert set(json.loads(out.read_text())["variants"]) == {"rtn8", "w8a8", "w8a8_grouped"}


@VNNI
def test_cpu_vnni_ab_smoke(bench_path: None, tmp_path: Path) -> None:
    """OLD is this checkout's own ``cpu_vnni.py``: the unfused results agree bit for bit."""
    out = tmp_path / "v.json"
    old = ROOT / "llmc" / "backends" / "kernels" / "cpu_vnni.py"
    _script("cpu_vnni_ab").main(["--old", str(old), "--smoke", "--rounds", "1", "-o", str(out)])
    (row,) = json.loads(out.read_text())["results"].values()
    assert row["new"]["bitexact"]


@VNNI
def test_cpu_sparse_decode_smoke(bench_path: None, tmp_path: Path) -> None:
    out = tmp_path / "s.json"
    argv = ["--smoke", "--skip-models", "--repeats", "1", "--rows", "4", "--out", str(out)]
    assert _script("cpu_sparse_decode").main(argv) == 0
    res = json.loads(out.read_text())
    assert [(r["k"], r["rows"]) for r in res["kernels"]] == [(256, 1), (256, 4)]


def test_cpu_attention_smoke(bench_path: None, tmp_path: Path) -> None:
    """Against this checkout's own kernel (``--base HEAD``); the script checks both outputs."""
    out = tmp_path / "att.json"
    argv = ["--shapes", "2x1x16", "--seq", "8", "--rounds", "1", "--inner", "1", "--base", "HEAD"]
    _script("cpu_attention").main([*argv, "--out", str(out)])
    assert set(json.loads(out.read_text())["shapes"]) == {"2x1x16"}


def _run(name: str, *args: str, tmp_path: Path) -> str:
    """``python bench/NAME.py ARGS`` in a subprocess (model-level scripts: their own process)."""
    r = subprocess.run(
        [sys.executable, str(BENCH / f"{name}.py"), *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT), "TVM_NUM_THREADS": "1"},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


def test_artifact_scripts_smoke(bench_path: None, tiny_cpu_artifact: Path, tmp_path: Path) -> None:
    """The scripts that time a compiled artifact (the shared ``tiny`` one, read only): a few
    decode steps each. ``decode_ab`` reaches into the runner's internals
    (``_common.bare_decode_call``), which is what rots when the runtime changes."""
    art = str(tiny_cpu_artifact)
    ab = tmp_path / "ab.json"
    _script("decode_ab").main([art, f"B={art}", "--rounds", "1", "--calls", "2", "--json", str(ab)])
    assert len(json.loads(ab.read_text())["results"]) == 2
    prof = tmp_path / "prof.json"
    _script("decode_profile").main([art, "--steps", "2", "--threads", "1", "--json", str(prof)])
    assert json.loads(prof.read_text())
    grp = tmp_path / "grp.json"
    argv = [f"A={art}", "--prompt", "8", "--steps", "2", "--rounds", "1", "-o", str(grp)]
    _script("cpu_group_decode").main(argv)
    assert set(json.loads(grp.read_text())["results"]) == {"A"}
    pl = tmp_path / "pl.json"
    argv = ["--artifacts", f"tiny={art}", "--prompt", "8", "--rounds", "1", "--out", str(pl)]
    _script("prefill_last").main(argv)
    assert json.loads(pl.read_text())
    assert _script("token_prune_profile").main([art, "--prompt-len", "8", "--repeats", "1"]) == 0


SLOW = "smoke run of a bench script; the code path is covered by {}"


@pytest.mark.slow(
    reason=SLOW.format(
        "tests/backends (test_cond.py, test_cpu_differential.py) and test_runtime_lm.py"
    )
)
def test_model_scripts_smoke(tmp_path: Path) -> None:
    """The scripts that compile ``tiny`` (or time the compiler), smallest settings."""
    out = tmp_path / "out"
    out.mkdir()
    w = str(tmp_path / "work")
    _run("prefill_last_compile", "tiny", "1", tmp_path=tmp_path)
    _run("zoo_layers", "inspect", "llama2-7b@2", tmp_path=tmp_path)
    _run("cpu_decode", "--models", "tiny", "--repeats", "1", "--pause", "0", "--threads", "1",
         "--work", w + "-cd", "--out", str(out / "cd.json"), tmp_path=tmp_path)  # fmt: skip
    _run("token_prune_cpu", "--prompt-len", "16", "--new-tokens", "2", "--repeats", "1",
         "--pause", "0", "--threads", "1", "--work", w + "-tp", "--out", str(out / "tp.json"),
         tmp_path=tmp_path)  # fmt: skip
    _run("cond_skip", "--shape", "toy", "--rounds", "1", "--steps", "2", "--threads", "1",
         "--work", w + "-cs", "--out", str(out / "cs.json"), tmp_path=tmp_path)  # fmt: skip
    _run("cond_skip", "--micro", "--micro-k", "4", "--rounds", "1", "--work", w + "-csm",
         "--out", str(out / "csm.json"), tmp_path=tmp_path)  # fmt: skip
    _run("passes_quality", "--only", "magnitude:sparsity=0.5", "--max-tokens", "512",
         "--threads", "1", "--out", str(out / "pq.json"), tmp_path=tmp_path)  # fmt: skip
    _run("cpu_attention", "--pasts", "16", "--shapes", "2x1x16", "--seq", "8", "--rounds", "1",
         "--inner", "1", "--base", "HEAD", "--out", str(out / "al.json"), tmp_path=tmp_path)  # fmt: skip
    _run("vm_args_micro", "--n", "8", "--rounds", "1", "--calls", "10", tmp_path=tmp_path)
    _run("moe_decode", "--layers", "1", "--experts", "4", "--hidden", "64", "--inter", "128",
         "--prefill", "8", "--repeats", "1", "--calls", "1", "--out", str(out / "moe.json"),
         tmp_path=tmp_path)  # fmt: skip
    _run("adaptive", "--ratios", "0.2", "--keeps", "0.5", "--window", "64", "--max-tokens", "256",
         "--prompt", "32", "--cont", "8", "--prune-tokens", "256", "--prompts", "1",
         "--ffn-prompt", "8", "--new", "2", "--calib-samples", "4", "--out", str(out / "ad.json"),
         tmp_path=tmp_path)  # fmt: skip
    assert sorted(p.name for p in out.iterdir()) == [
        "ad.json", "al.json", "cd.json", "cs.json", "csm.json", "moe.json", "pq.json", "tp.json",
    ]  # fmt: skip


@pytest.mark.slow(
    reason=SLOW.format("tests/fpga (test_cli.py, test_ffn_skip.py, test_token_prune.py)")
)
def test_fpga_scripts_smoke(tmp_path: Path) -> None:
    """The FlightLLM simulator benches (LLaMA2-7B architecture only: minutes)."""
    _run(
        "fpga_token_prune", "--keeps", "0.5", "--out", str(tmp_path / "tp.json"), tmp_path=tmp_path
    )
    _run("fpga_ffn_skip", "--out", str(tmp_path / "fs.json"), tmp_path=tmp_path)
    _run("fpga_sim", "--out", str(tmp_path / "sim.json"), tmp_path=tmp_path)
    assert {p.name for p in tmp_path.glob("*.json")} == {"tp.json", "fs.json", "sim.json"}
