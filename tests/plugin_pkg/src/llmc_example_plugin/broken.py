"""A deliberately buggy pass: it rewires a linear to a value of the wrong shape, which the
verifier catches and the PassManager reports by the pass's name."""

from dataclasses import dataclass

from llmc.passes import Pass, register_pass


@register_pass
@dataclass(frozen=True)
class BreakIR(Pass):
    """(test only) Feed every linear its own weight as the input: leaves the IR invalid."""

    name = "break-ir"

    def run(self, graph, ctx) -> None:
        for node in graph.find("linear"):
            node.inputs = (node.inputs[1], *node.inputs[1:])
