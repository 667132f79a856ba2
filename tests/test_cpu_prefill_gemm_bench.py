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
            "--out",
            str(out),
        ],
        check=True,
        capture_output=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    (shape,) = json.loads(out.read_text())["shapes"]
    assert (shape["K"], shape["N"], shape["M"]) == (128, 128, 16)
    assert set(shape["kernels"]) - {"i8_amx"} == {  # i8_amx: on an AMX host
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
