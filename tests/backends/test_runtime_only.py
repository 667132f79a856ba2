"""A CPU artifact runs with the TVM runtime library alone (no compiler loaded)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = r"""
import json, sys, torch
from llmc.runtime.tvm_runner import load, runtime_only_mode
lm = load(sys.argv[1])
ids = torch.tensor([[3, 1, 4, 1, 5]])
logits, past = lm.forward(ids, torch.arange(5)[None], lm.empty_past(1))
maps = open("/proc/self/maps").read()
print(json.dumps({
    "runtime_only": runtime_only_mode(),
    "compiler_loaded": "libtvm_compiler" in maps,
    "runtime_loaded": "libtvm_runtime" in maps,
    "logits": logits[0, -1, :8].tolist(),
}))
"""


def test_cpu_artifact_runs_runtime_only(toy_cpu: Path, toy_runner):
    env = dict(os.environ, LLMC_TVM_RUNTIME_ONLY="1")
    root = Path(__file__).resolve().parents[2]
    env["PYTHONPATH"] = str(root)
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(toy_cpu)],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["runtime_only"] and out["runtime_loaded"]
    assert not out["compiler_loaded"]
    import torch

    ids = torch.tensor([[3, 1, 4, 1, 5]])
    want, _ = toy_runner.forward(ids, torch.arange(5)[None], toy_runner.empty_past(1))
    torch.testing.assert_close(torch.tensor(out["logits"]), want[0, -1, :8], rtol=0, atol=0)
