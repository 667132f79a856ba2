"""Example llmc plugin: passes written outside llmc (see llmc's docs/custom-pass.md)."""

from llmc_example_plugin.broken import BreakIR
from llmc_example_plugin.round_weights import RoundWeights

__all__ = ["BreakIR", "RoundWeights"]
