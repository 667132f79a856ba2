"""Round-to-nearest weight-only quantization (int2..int8, per channel or per group)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llmc.passes.calibration import InputStats
from llmc.passes.quant_common import QuantBase, rtn_quantize


@dataclass(frozen=True)
class RTNQuant(QuantBase):
    """Weight-only round-to-nearest quantization (bits=2..8, group=N or 0 per channel)."""

    name = "rtn"
    method = "rtn"

    def quantize(
        self, w: torch.Tensor, group: int, stats: InputStats | None, keep: torch.Tensor | None
    ):
        return rtn_quantize(w, self.bits, group, self.sym, keep, self.scale_dtype)
