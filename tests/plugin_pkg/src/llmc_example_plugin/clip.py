"""A pass registered by its entry point alone (no decorator): clip weight outliers."""

from dataclasses import dataclass

from llmc.passes import Pass, PassOptionError


@dataclass(frozen=True)
class ClipWeights(Pass):
    """Clip every dense linear weight to +-k standard deviations of its matrix."""

    name = "clip-weights"
    k: float = 6.0

    def check(self) -> None:
        if self.k <= 0:
            raise PassOptionError(f"k must be > 0, got {self.k}")

    def run(self, graph, ctx) -> None:
        for node in graph.find("linear"):
            p = graph.param_of(node.inputs[1])
            if p is None or not p.format.is_dense:
                continue
            w = p.data["value"]
            lim = float(self.k * w.float().std())
            clipped = int((w.abs() > lim).sum())
            p.data["value"] = w.clamp(-lim, lim)
            p.invalidate()
            ctx.report.count("clipped", clipped)
