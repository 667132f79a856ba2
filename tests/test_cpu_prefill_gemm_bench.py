"""``bench/cpu_prefill_gemm.py`` still runs against the kernels' current signatures: one small
shape, one round (its own check of every kernel against numpy runs before timing)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llmc.backends.cpu.pipeline import kernel_isa

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(kernel_isa() != "avx512_vnni", reason="host CPU has no AVX-512 VNNI")
def test_prefill_gemm_bench_runs(tmp_path) -> None:
    out = tmp_path / "pg.json"
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "cpu_prefill_gemm.py"),
            "--rounds",
            "1",
            "--inner",
            "1",
            "--rows",
            "16",
            "--shapes",
            "128x128",
            "--threads",
            "1",
            "--probe-iters",
            "100000",
            "--amx-base",
            "HEAD",
            "--out",
            str(out),
        ],
        check=True,
        capture_output=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    (shape,) = json.loads(out.read_text())["shapes"]
    assert (shape["K"], shape["N"], shape["M"]) == (128, 128, 16)
    amx = {"i8_amx", "i8_amx_base"}  # on an AMX host: the kernel, and itself at --amx-base
    assert amx <= set(shape["kernels"]) or not amx & set(shape["kernels"])
    assert set(shape["kernels"]) - amx - {"torch_onednn_i8"} == {
        "f32_panel",
        "f32_blocked",
        "i8_vnni_rows",
        "i8_prefill",
        "torch_f32",
    }
    for name, k in shape["kernels"].items():  # the same-moment probe ran around the one sample
        assert len(k["probe"]) == 1 and k["probe"][0] > 0, name
        want = k["cpu"][0] / k["probe"][0]  # rounded to 3 decimals in the JSON
        assert k["median_of_probe"] == pytest.approx(want, rel=0.02, abs=6e-4), name


def test_amx_base_names_a_missing_revision_in_one_line(tmp_path) -> None:
    r = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "cpu_prefill_gemm.py"),
            "--amx-base",
            "no-such-rev",
            "--out",
            str(tmp_path / "x.json"),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert r.returncode != 0 and not (tmp_path / "x.json").exists()
    assert r.stderr.strip().splitlines() == [
        "bench/cpu_prefill_gemm.py: --amx-base: no llmc/backends/kernels/cpu_amx.py at 'no-such-rev'"
    ]
