"""Bad input: unsupported ops, artifacts built for something else, missing toolchains."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from llmc.errors import LlmcError, UnsupportedOpError
from tests.backends.conftest import compile_graph


def test_unsupported_op_names_op_and_target(tmp_path: Path, monkeypatch):
    """An op with no lowering on the target is one line naming the op, its scope and the target,
    and nothing is written. Every built-in op lowers on every TVM target now
    (tests/backends/test_cond_coverage.py), so the rule for ``gather_rows`` is taken away here,
    as a target without it would be."""
    from llmc.backends import rules
    from tests.lm_fixtures import toy_lm

    monkeypatch.setattr(
        rules, "COMMON_RULES", [r for r in rules.COMMON_RULES if r.op != "gather_rows"]
    )
    with pytest.raises(UnsupportedOpError) as e:
        compile_graph(toy_lm(layers=2, prune=(1, 1, 3)), "cpu", tmp_path / "out")
    msg = str(e.value)
    assert "'gather_rows'" in msg and "cpu" in msg and "model.layers.1.prune" in msg
    assert "\n" not in msg
    assert not (tmp_path / "out").exists()  # nothing half-written


def _copy(src: Path, dst: Path, edit) -> Path:
    shutil.copytree(src, dst)
    m = json.loads((dst / "manifest.json").read_text())
    edit(m)
    (dst / "manifest.json").write_text(json.dumps(m))
    return dst


def test_artifact_for_other_target_refused(toy_cpu: Path, tmp_path: Path):
    from llmc.runtime.tvm_runner import load

    def fpga(m):
        m["target"], m["target_kind"] = "u280", "fpga"

    with pytest.raises(LlmcError, match="u280"):
        load(_copy(toy_cpu, tmp_path / "a", fpga))

    def other_cpu(m):
        m["backend"]["cpu"]["isa"] = ["avx512f", "amx_tile", "avx512_fp16", "avx2"]
        m["backend"]["cpu"]["mcpu"] = "future-cpu"

    from llmc.targets.cpu_isa import host_isa_flags

    if not {"amx_tile", "avx512_fp16"} <= set(host_isa_flags()):
        with pytest.raises(LlmcError, match="recompile"):
            load(_copy(toy_cpu, tmp_path / "b", other_cpu))

    def old_abi(m):
        m["backend"]["abi"] = "llmc-tvm-v0"

    with pytest.raises(LlmcError, match="ABI"):
        load(_copy(toy_cpu, tmp_path / "c", old_abi))


def test_artifact_from_other_llmc_version_refused(toy_cpu: Path, tmp_path: Path):
    from llmc.runtime.tvm_runner import load

    def old(m):
        m["versions"]["llmc"] = "0.0.1"

    with pytest.raises(LlmcError, match="0.0.1"):
        load(_copy(toy_cpu, tmp_path / "v", old))


def test_tampered_weights_refused(toy_cpu: Path, tmp_path: Path):
    from llmc.runtime.tvm_runner import load

    dst = _copy(toy_cpu, tmp_path / "t", lambda m: None)
    data = bytearray((dst / "weights.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (dst / "weights.safetensors").write_bytes(bytes(data))
    with pytest.raises(LlmcError, match="hash"):
        load(dst)


def test_meta_weights_need_random_weights_flag(tmp_path: Path):
    from llmc.runtime.tvm_runner import load
    from tests.lm_fixtures import toy_lm

    g = toy_lm(layers=2)
    for p in g.params.values():
        p.data = {k: torch.empty(v.shape, dtype=v.dtype, device="meta") for k, v in p.data.items()}
    out = compile_graph(g, "cpu", tmp_path / "meta")
    with pytest.raises(LlmcError, match="random_weights"):
        load(out)
    lm = load(out, random_weights=True)
    logits, _ = lm.forward(torch.tensor([[1, 2]]), torch.arange(2)[None], lm.empty_past(1))
    assert torch.isfinite(logits).all()


def test_out_of_range_indices_refused(toy_cpu: Path):
    """The compiled lookups do not bounds-check; the runner refuses what torch would."""
    from llmc.runtime.tvm_runner import load

    lm = load(toy_cpu)
    vocab = lm.meta["vocab_size"]
    with pytest.raises(ValueError, match=f"token id {vocab} is outside the vocabulary"):
        lm.forward(torch.tensor([[1, vocab]]), torch.arange(2)[None], lm.empty_past(1))
    with pytest.raises(ValueError, match="token id -1"):
        lm.forward(torch.tensor([[-1]]), torch.arange(1)[None], lm.empty_past(1))
    lm.meta = {**lm.meta, "position_embedding": "learned"}
    limit = lm.meta["max_position_embeddings"]
    with pytest.raises(ValueError, match=f"position {limit} is past"):
        lm.forward(torch.tensor([[1]]), torch.tensor([[limit]]), lm.empty_past(1))


def test_compiled_lookup_clamps_when_the_check_is_bypassed(toy_cpu: Path, monkeypatch):
    """Defence in depth: without the runner's check, an id past the table reads its last row
    (TVM's take in "clip" mode), never memory past it."""
    from llmc.runtime.tvm_runner import load

    lm = load(toy_cpu)
    vocab = lm.meta["vocab_size"]
    monkeypatch.setattr(lm, "check_indices", lambda ids, pos: None)
    pos = torch.arange(2)[None]
    bad, _ = lm.forward(torch.tensor([[1, vocab + 1000]]), pos, lm.empty_past(1))
    last, _ = lm.forward(torch.tensor([[1, vocab - 1]]), pos, lm.empty_past(1))
    torch.testing.assert_close(bad, last)
