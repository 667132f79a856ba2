"""Compile memory (issue 14 item 5): streaming safetensors writes, memory-mapped reads, and
``--random-weights`` compiles of architecture-only models (what bench/compile_time.py measures)."""

from __future__ import annotations

import struct

import pytest
import torch

from llmc.errors import LlmcError
from llmc.safetensors_io import DATA_ALIGN, Entry, map_safetensors, write_safetensors


def test_streamed_file_reads_back_with_safetensors_and_the_map(tmp_path) -> None:
    from safetensors.torch import load_file

    want = {
        "a": torch.randn(3, 5),
        "b": torch.arange(7, dtype=torch.int8),
        "c": torch.randn(2, 2).to(torch.bfloat16),
        "d": torch.tensor([True, False, True]),
        "f": torch.randn(2),  # starts at an odd offset: mapped unaligned, still read right
        "e": torch.empty(0, 4),
    }
    produced: list[str] = []

    def make(k: str):
        def f() -> torch.Tensor:
            produced.append(k)  # one at a time, in file order
            return want[k]

        return f

    entries = [Entry(k, tuple(v.shape), v.dtype, make(k)) for k, v in want.items()]
    p = tmp_path / "x.safetensors"
    write_safetensors(p, entries, {"k": "v"})
    assert produced == list(want)
    (n,) = struct.unpack("<Q", p.read_bytes()[:8])
    assert (8 + n) % DATA_ALIGN == 0
    ref = load_file(str(p))
    mapped = map_safetensors(p)
    for k, v in want.items():
        assert ref[k].dtype == v.dtype and torch.equal(ref[k], v)
        assert mapped[k].dtype == v.dtype and torch.equal(mapped[k], v)


def test_producer_that_lies_about_its_tensor_is_an_error(tmp_path) -> None:
    e = Entry("w", (2, 2), torch.float32, lambda: torch.zeros(2, 3))
    with pytest.raises(LlmcError, match="produced as"):
        write_safetensors(tmp_path / "x.safetensors", [e])


def test_random_weights_fill_an_architecture_only_model() -> None:
    from llmc.compile import compile_model

    res = compile_model("gpt2", target="ref", dry_run=True, random_weights=True)
    assert not any(p.is_meta for p in res.graph.params.values())
    w = res.graph.params["transformer.h.0.mlp.c_fc.weight"].value()
    assert 0.015 < float(w.float().std()) < 0.025  # N(0, 0.02)


def test_random_weights_refuse_a_model_that_has_weights() -> None:
    from llmc.compile import compile_model

    with pytest.raises(LlmcError, match="--random-weights applies to architecture-only"):
        compile_model("tiny", target="ref", dry_run=True, random_weights=True)
