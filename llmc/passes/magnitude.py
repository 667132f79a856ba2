"""Magnitude pruning: drop the smallest |W| (per layer, or per N:M group)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llmc.passes.calibration import InputStats
from llmc.passes.prune_common import PruneBase, nm_keep_mask, unstructured_keep_mask


@dataclass(frozen=True)
class MagnitudePrune(PruneBase):
    """Prune the smallest-magnitude weights (data-free; sparsity=R or pattern=N:M)."""

    name = "magnitude"
    per_row: bool = False  # compare within each output row instead of the whole layer

    def prune(self, w: torch.Tensor, stats: InputStats | None) -> torch.Tensor:
        score = w.abs()
        nm = self.nm
        if nm is not None:
            keep = nm_keep_mask(score, *nm)
        else:
            keep = unstructured_keep_mask(score, self.ratio, self.per_row)
        return w * keep
