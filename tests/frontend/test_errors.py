"""Unsupported constructs fail loudly: the error names the ATen op and the module scope."""

from __future__ import annotations

import pytest
import torch

from llmc.errors import UnsupportedOpError
from llmc.frontends.generic import from_module
from llmc.frontends.hf import from_hf_model
from tests.frontend.hf_models import make


class FFTMixer(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.fft.fft(x, dim=-1).real


class Block(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(8, 8)
        self.mixer = FFTMixer()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mixer(self.fc(x))


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = torch.nn.ModuleList([Block(), Block()])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for b in self.blocks:
            x = b(x)
        return x


def test_custom_module_fft_names_op_and_scope():
    with pytest.raises(UnsupportedOpError) as e:
        from_module(Net(), (torch.randn(2, 8),), name="fft")
    msg = str(e.value)
    assert "aten.fft_fft" in msg and "blocks.0.mixer" in msg
    assert "test_errors.py" in msg  # the source line of the offending call


def test_hf_model_with_unsupported_piece_names_scope():
    model = make("llama")
    model.model.layers[1].mlp.act_fn = FFTMixer()
    with pytest.raises(
        UnsupportedOpError, match=r"aten\.fft_fft.* at model\.layers\.1\.mlp\.act_fn"
    ):
        from_hf_model(model, name="bad")
    # The substitutions are undone even when the import fails.
    assert model.config._attn_implementation != "llmc"
    assert "forward" not in model.model.norm.__dict__


def test_unsupported_rope_scaling():
    model = make("llama")
    model.config.rope_parameters = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 2.0}
    with pytest.raises(UnsupportedOpError, match="rope_type 'yarn'"):
        from_hf_model(model, name="yarn")


def test_unsupported_architecture_object():
    with pytest.raises(UnsupportedOpError, match="not a supported architecture"):
        from_hf_model(Net(), name="x")
