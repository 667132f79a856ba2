"""A pass in twenty lines: round dense linear weights to a fixed-point grid."""

from dataclasses import dataclass

import torch

from llmc.passes import Pass, PassOptionError, register_pass


@register_pass
@dataclass(frozen=True)
class RoundWeights(Pass):
    """Round every dense linear weight to a multiple of 2**-frac_bits."""

    name = "round-weights"
    frac_bits: int = 8

    def check(self) -> None:
        if not 0 <= self.frac_bits <= 24:
            raise PassOptionError(f"frac_bits must be in 0..24, got {self.frac_bits}")

    def run(self, graph, ctx) -> None:
        step = 2.0**-self.frac_bits
        for node in graph.find("linear"):
            p = graph.param_of(node.inputs[1])
            if p is None or not p.format.is_dense:
                continue
            w = p.data["value"]
            p.data["value"] = torch.round(w / step) * step
            p.invalidate()
            ctx.report.count("weights_rounded")
            ctx.report.layer(p.name, max_error=float((p.data["value"] - w).abs().max()))
