"""The cross-compiled Llama-2-7B-shape CUDA artifacts of ``.gpu/`` (tools/prepare_gpu_check.sh)
run on a GPU and agree with transformers given the same random weights.

Marked ``gpu``: skipped where torch sees no CUDA device or the folder is not prepared. Run on a
lent GPU by ``bench/gpu_check.sh`` (runtime-only TVM, no compiler there); by hand::

    LLMC_GPU_DIR=.gpu python -m pytest -m gpu tests/backends/test_gpu_artifacts.py
"""

from __future__ import annotations

import gc
import json
import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
GPU_DIR = Path(os.environ.get("LLMC_GPU_DIR", ROOT / ".gpu"))
ARTIFACTS = {"f16": "llama2-7b-f16", "w4a16": "llama2-7b-w4a16", "f16-tc": "llama2-7b-f16-tc"}

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def gpu() -> Path:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    if not (GPU_DIR / "prepared.json").is_file():
        pytest.skip(f"{GPU_DIR} is not prepared (tools/prepare_gpu_check.sh)")
    return GPU_DIR


def _weight(lm, i: int) -> torch.Tensor:
    return torch.from_dlpack(lm.weights[i])


def dequant_q4(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """``(nibble - zero) * scale`` per group (llmc/backends/layouts.py, ``q4.*``)."""
    out, half = codes.shape
    nib = torch.stack([codes & 15, codes >> 4], dim=-1).reshape(out, 2 * half).float()
    group = 2 * half // scale.shape[1]
    z = zero.float().repeat_interleave(group, dim=1)
    return ((nib - z) * scale.float().repeat_interleave(group, dim=1)).half()


def _hf_with_weights_of(lm, manifest: dict):
    """transformers' LlamaForCausalLM holding the artifact's (random) weights, on the GPU."""
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model(**manifest["hf_config"])
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float16).eval()
    params = dict(model.named_parameters())
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for i, w in enumerate(lm.backend["weights"]):
        parts.setdefault(w["param"], {})[w["layout"]] = _weight(lm, i)
    assert set(parts) == set(params), set(parts) ^ set(params)
    with torch.no_grad():
        for name, p in params.items():
            got = parts[name]
            if "dense" in got:
                p.copy_(got["dense"].reshape(p.shape))
            else:
                p.copy_(dequant_q4(got["q4.codes"], got["q4.scale"], got["q4.zero"]))
    return model


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("kind", ["f16", "w4a16", "f16-tc"])
def test_artifact_matches_transformers(gpu: Path, kind: str):
    from llmc.runtime.tvm_runner import load

    art = gpu / "artifacts" / ARTIFACTS[kind]
    manifest = json.loads((art / "manifest.json").read_text())
    lm = load(art, random_weights=True)
    first = _weight(lm, 1)
    assert first.is_cuda and float(first.float().std()) > 0  # drawn on the GPU, not zeros
    model = _hf_with_weights_of(lm, manifest)
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 32000, (1, 24), generator=gen)
    with torch.no_grad():
        got = lm.prefill(ids[0, :-1]).float()
        got_next = lm.decode(int(ids[0, -1])).float()
        ref = model(ids[:, :-1].cuda()).logits[0, -1].float()
        ref_next = model(ids.cuda()).logits[0, -1].float()
    assert torch.isfinite(got).all() and torch.isfinite(got_next).all()
    # fp16 both ways, different summation orders: well inside 2% of the logits' norm
    assert _rel(got, ref) < 2e-2, (kind, _rel(got, ref))
    assert _rel(got_next, ref_next) < 2e-2, (kind, _rel(got_next, ref_next))
    del lm, model
    gc.collect()
    torch.cuda.empty_cache()


def test_artifact_refuses_a_missing_device_index(gpu: Path):
    from llmc.runtime.tvm_runner import ArtifactTargetError, load

    with pytest.raises(ArtifactTargetError, match="no cuda device 99"):
        load(gpu / "artifacts" / ARTIFACTS["f16"], device_id=99, random_weights=True)
