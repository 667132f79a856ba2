"""llmc's intermediate representation: typed SSA graphs over a small LLM-shaped op set."""

from llmc.ir.graph import BLOCK_TAGS, Graph, GraphBuilder, Node, Value, regions_of
from llmc.ir.params import DENSE, Param, QuantSpec, SparsitySpec, StorageFormat
from llmc.ir.parser import parse_graph
from llmc.ir.printer import print_graph
from llmc.ir.registry import Cost, OpDef, all_ops, get_op
from llmc.ir.types import Dim, SymDim, TensorType, sym
from llmc.ir.verify import check, verify

__all__ = [
    "BLOCK_TAGS",
    "Cost",
    "DENSE",
    "Dim",
    "Graph",
    "GraphBuilder",
    "Node",
    "OpDef",
    "Param",
    "QuantSpec",
    "SparsitySpec",
    "StorageFormat",
    "SymDim",
    "TensorType",
    "Value",
    "all_ops",
    "check",
    "get_op",
    "parse_graph",
    "print_graph",
    "regions_of",
    "sym",
    "verify",
]
