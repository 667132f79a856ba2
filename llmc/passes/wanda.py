"""Wanda (Sun et al., ICLR 2024): prune by |W_ij| * ||X_j||_2, compared within each output row."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llmc.passes.calibration import InputStats
from llmc.passes.prune_common import PruneBase, nm_keep_mask, unstructured_keep_mask


@dataclass(frozen=True)
class WandaPrune(PruneBase):
    """Prune by weight magnitude times input-activation norm, per output row (no weight update)."""

    name = "wanda"
    needs_calibration = True

    def prune(self, w: torch.Tensor, stats: InputStats | None) -> torch.Tensor:
        assert stats is not None
        score = w.abs() * stats.norm.to(torch.float32)[None, :]
        nm = self.nm
        if nm is not None:
            keep = nm_keep_mask(score, *nm)
        else:
            keep = unstructured_keep_mask(score, self.ratio, per_row=True)
        return w * keep
