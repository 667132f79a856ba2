"""The GPU check's local dry run (no GPU): script syntax, the prepared folder (built by
tools/prepare_gpu_check.sh: cross-compiled sm_90 artifacts, the cp312 FFI wheel, the compiler-less
TVM), its size accounting, the runtime-only TVM it carries, and bench/gpu_check.py --dry-run's
result file against its schema."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ["bench/gpu_check.sh", "tools/prepare_gpu_check.sh"]


def _support():
    spec = importlib.util.spec_from_file_location("gpu_support", ROOT / "bench/gpu_support.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("gpu_support", mod)
    spec.loader.exec_module(mod)
    return mod


gs = _support()


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """A prepared folder, built by the real script (compiles two llama2-7b artifacts for h100)."""
    out = tmp_path_factory.mktemp("gpu") / "prep"
    env = dict(os.environ, GPU_DIR=str(out), PY=sys.executable)
    p = subprocess.run(
        ["bash", str(ROOT / "tools/prepare_gpu_check.sh")],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    if p.returncode != 0 and ("nvcc" in p.stderr or "No matching distribution" in p.stderr):
        pytest.skip(f"cannot prepare here: {p.stderr.strip().splitlines()[-1]}")
    if p.returncode != 0 and "Could not" in p.stderr and "connection" in p.stderr.lower():
        pytest.skip("pip download has no network here")
    assert p.returncode == 0, p.stderr[-3000:]
    assert "MiB of 64 MiB" in p.stdout  # the size it prints
    return out


@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_parse(script: str):
    p = subprocess.run(["bash", "-n", str(ROOT / script)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert os.access(ROOT / script, os.X_OK)


def test_gpu_check_refuses_an_unprepared_folder(tmp_path: Path):
    env = dict(os.environ, GPU_DIR=str(tmp_path / "none"))
    p = subprocess.run(
        ["bash", str(ROOT / "bench/gpu_check.sh")], capture_output=True, text=True, env=env
    )
    assert p.returncode == 1
    assert p.stderr.strip().splitlines() == [
        f"gpu_check: error: {tmp_path / 'none'}: not prepared; run tools/prepare_gpu_check.sh first"
    ]


def test_size_accounting(tmp_path: Path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.bin").write_bytes(b"\1" * 3000)
    (tmp_path / "y.bin").write_bytes(b"\2" * 1000)
    (tmp_path / "prepared.json").write_text("{}")  # the listing itself is not counted
    acc = gs.account(tmp_path, repo_bytes=500, budget=4500)
    assert acc == {
        "gpu_dir_bytes": 4000,
        "repo_bytes": 500,
        "total_bytes": 4500,
        "budget_bytes": 4500,
    }
    with pytest.raises(gs.PrepError, match=r"over the 0 MiB .*largest: a/x\.bin"):
        gs.account(tmp_path, repo_bytes=501, budget=4500)
    repo = gs.repo_travel_bytes()
    assert 1_000_000 < repo < gs.BUDGET_BYTES  # the checkout itself fits, with room


def test_prepared_folder(prepared: Path):
    info = gs.check_prepared(prepared)
    assert set(info["artifacts"]) == {"f16", "w4a16", "f16-tc"}
    for art in info["artifacts"].values():
        assert art["arch"] == "sm_90" and art["cubin_archs"] == art["ptx_archs"] == ["sm_90"]
        assert art["kernels"] > 10
    mma = {k: a["mma_instructions"] for k, a in info["artifacts"].items()}
    if mma["f16"] is not None:  # None: no zstd tool to read the PTX
        assert mma["f16"] == mma["w4a16"] == 0 and mma["f16-tc"] > 0
    assert info["wheels"][0].startswith("apache_tvm_ffi-") and "-cp312-" in info["wheels"][0]
    listing = json.loads((prepared / "prepared.json").read_text())
    assert listing["total_bytes"] == listing["gpu_dir_bytes"] + listing["repo_bytes"]
    assert listing["total_bytes"] <= gs.BUDGET_BYTES
    assert listing["gpu_dir_bytes"] == sum(f["bytes"] for f in listing["files"].values())
    with tarfile.open(prepared / gs.TVM_TARBALL) as tar:
        names = tar.getnames()
    assert "tvm/lib/libtvm_runtime_cuda.so" in names
    assert not any("libtvm_compiler" in n or n.startswith("tvm/3rdparty") for n in names)


def test_damaged_prepared_folder_is_refused(prepared: Path, tmp_path: Path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(prepared, bad)
    so = bad / "artifacts" / "llama2-7b-w4a16" / "model.so"
    so.write_bytes(so.read_bytes()[:-10])
    with pytest.raises(gs.PrepError, match="model.so: missing or changed"):
        gs.check_prepared(bad)
    p = subprocess.run(
        [sys.executable, str(ROOT / "bench/gpu_check.py"), "--dry-run", "--gpu-dir", str(bad)],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 1 and p.stderr.count("\n") == 1 and "missing or changed" in p.stderr


def test_packed_tvm_imports_runtime_only(prepared: Path, tmp_path: Path):
    with tarfile.open(prepared / gs.TVM_TARBALL) as tar:
        tar.extractall(tmp_path, filter="data")
    code = (
        "import tvm, tvm.runtime.vm, json; "
        "print(json.dumps([tvm.__file__, 'libtvm_compiler' in open('/proc/self/maps').read()]))"
    )
    env = dict(os.environ, TVM_USE_RUNTIME_LIB="1", PYTHONPATH=f"{tmp_path}:{ROOT}")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert p.returncode == 0, p.stderr[-2000:]
    path, compiler = json.loads(p.stdout.strip().splitlines()[-1])
    assert path == str(tmp_path / "tvm" / "__init__.py") and not compiler


def test_dry_run_result_schema(prepared: Path, tmp_path: Path):
    out = tmp_path / "gpu.json"
    cmd = [sys.executable, str(ROOT / "bench/gpu_check.py"), "--dry-run"]
    cmd += ["--gpu-dir", str(prepared), "--out", str(out)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.loads(out.read_text())
    assert gs.validate_result(res) == []
    assert res["dry_run"] is True and res["pytest"] is None and res["bandwidth"]["GBps"] > 0
    runs = {r["name"]: r for r in res["runs"]}
    llmc_runs = ("llmc-f16", "llmc-w4a16", "llmc-f16-tc")
    assert [runs[n]["status"] for n in llmc_runs] == ["skipped"] * 3
    for name in ("hf-eager", "hf-compile"):
        r = runs[name]
        assert r["status"] == "ok" and r["decode_tok_s"] > 0 and 0 < r["pct_roofline"] < 100
        assert r["roofline_tok_s"] * r["bytes_per_token"] == pytest.approx(
            res["bandwidth"]["GBps"] * 1e9, rel=1e-2
        )
    # the schema check catches what a broken driver would write
    broken = json.loads(out.read_text())
    del broken["machine"]["gpu"]
    broken["runs"][3]["decode_tok_s"] = "fast"
    broken["runs"][4].update(status="ok", decode_tok_s=None)
    assert gs.validate_result(broken) == [
        "gpu.json.machine.gpu: missing",
        "gpu.json.runs[3].decode_tok_s: expected float, got str",
        "gpu.json.runs[4]: status ok without decode_tok_s",
    ]


def test_compare_and_goals():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "bench/gpu_check.py")
    gc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gc)

    def run(name, tok, pct, status="ok"):
        return {"name": name, "status": status, "decode_tok_s": tok, "pct_roofline": pct}

    res = [
        run("llmc-f16", 190.0, 86.0),
        run("llmc-w4a16", 80.0, 20.0),
        run("hf-eager", 33.0, 14.0),
        run("hf-compile", 0.0, 0.0, status="failed"),
    ]
    assert gc.compare(res) == {
        "llmc-f16 / hf-eager": 5.76,
        "llmc-w4a16 / hf-eager": 2.42,
        "goal llmc-f16 >= 85% of roofline": True,
        "goal llmc-w4a16 >= 2.5x hf-eager": False,
    }
    assert gc.compare(res[2:]) == {
        "goal llmc-f16 >= 85% of roofline": None,
        "goal llmc-w4a16 >= 2.5x hf-eager": None,
    }
