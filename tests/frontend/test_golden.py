"""Golden IR for one small model per attention style: what the frontend emits, readable in review.

Regenerate after an intended change with ``LLMC_UPDATE_GOLDEN=1 .venv/bin/python -m pytest
tests/frontend/test_golden.py`` and read the diff.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import transformers as T

from llmc.frontends.hf import from_hf_model
from llmc.ir import print_graph

GOLDEN = Path(__file__).parent / "golden"

CASES = {
    "llama": lambda: T.LlamaForCausalLM(
        T.LlamaConfig(
            vocab_size=32,
            hidden_size=16,
            intermediate_size=24,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            max_position_embeddings=32,
        )
    ),  # fmt: skip
    "gpt2": lambda: T.GPT2LMHeadModel(
        T.GPT2Config(
            vocab_size=32,
            n_embd=16,
            n_layer=1,
            n_head=2,
            n_positions=32,
            bos_token_id=0,
            eos_token_id=0,
        )
    ),  # fmt: skip
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden_ir(name):
    torch.manual_seed(0)
    text = print_graph(from_hf_model(CASES[name]().eval(), name=name))
    path = GOLDEN / f"{name}.ir"
    if os.environ.get("LLMC_UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text(), f"{path} is stale (see the module docstring)"
