"""Static cost analysis of a graph from the op registry (FLOPs, bytes, weights).

Costs are evaluated at concrete sizes (``env`` binds ``batch``, ``seq``, ``past``); a param input
is charged its storage-format bytes (int4 weights cost half of int8), so quantization shows up in
the byte counts without any analysis knowing about it. ``cond`` regions are charged their more
expensive branch (an upper bound) unless ``cond_taken`` says otherwise.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from llmc.ir.graph import Graph, Node
from llmc.ir.registry import Cost, get_op
from llmc.ir.structure import complete_env
from llmc.ir.types import DTYPE_BYTES, TensorType

if TYPE_CHECKING:
    from llmc.targets import HardwareSpec


@dataclass
class CostReport:
    total: Cost
    by_op: dict[str, Cost] = field(default_factory=dict)
    by_block: dict[str, Cost] = field(default_factory=dict)
    per_node: list[tuple[Node, Cost]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        def c(x: Cost) -> dict[str, float]:
            return {"flops": x.flops, "bytes_read": x.bytes_read, "bytes_written": x.bytes_written}

        return {
            "total": c(self.total),
            "by_op": {k: c(v) for k, v in sorted(self.by_op.items())},
            "by_block": {k: c(v) for k, v in sorted(self.by_block.items())},
        }


def concrete(t: TensorType, env: Mapping[str, int]) -> TensorType:
    return TensorType(t.concrete(env), t.dtype)


def graph_cost(graph: Graph, env: Mapping[str, int], *, keep_nodes: bool = False) -> CostReport:
    by_op: dict[str, Cost] = defaultdict(Cost)
    by_block: dict[str, Cost] = defaultdict(Cost)
    per_node: list[tuple[Node, Cost]] = []
    env = complete_env(graph, env)  # per-layer lengths (token pruning): see ir/structure.py
    total = _cost(graph, env, by_op, by_block, per_node if keep_nodes else None)
    return CostReport(total, dict(by_op), dict(by_block), per_node)


def _cost(
    g: Graph,
    env: Mapping[str, int],
    by_op: dict[str, Cost],
    by_block: dict[str, Cost],
    per_node: list[tuple[Node, Cost]] | None,
) -> Cost:
    root = g.root()
    total = Cost()
    for n in g.nodes:
        od = get_op(n.op)
        if od.region_fields:
            branches = []
            for r in od.regions(n.attrs):
                bo: dict[str, Cost] = defaultdict(Cost)
                bb: dict[str, Cost] = defaultdict(Cost)
                branches.append((_cost(r, env, bo, bb, None), bo, bb))
            c, bo, bb = max(branches, key=lambda x: x[0].flops + x[0].bytes)
            for k, v in bo.items():
                by_op[k] = by_op[k] + v
            for k, v in bb.items():
                by_block[k] = by_block[k] + v
            total = total + c
            continue
        ins = [concrete(v.type, env) for v in n.inputs]
        in_bytes = []
        for v, t in zip(n.inputs, ins, strict=True):
            p = root.param_of(v)
            if p is not None:
                in_bytes.append(p.storage_bytes())
            else:
                numel = 1
                for d in t.shape:
                    numel *= int(d)
                in_bytes.append(float(numel * DTYPE_BYTES[t.dtype]))
        c = od.cost(ins, concrete(n.out.type, env), n.attrs, in_bytes)
        by_op[n.op] = by_op[n.op] + c
        by_block[n.block or "other"] = by_block[n.block or "other"] + c
        if per_node is not None:
            per_node.append((n, c))
        total = total + c
    return total


def param_summary(graph: Graph) -> dict[str, Any]:
    """Parameter count, storage bytes, and how many are quantized or sparse."""
    count = 0
    nbytes = 0.0
    quant = sparse = 0
    for p in graph.params.values():
        n = 1
        for d in p.type.shape:
            n *= int(d)
        count += n
        nbytes += p.storage_bytes()
        quant += n if p.format.quant is not None else 0
        sparse += n if p.format.sparsity is not None else 0
    return {
        "parameters": count,
        "storage_bytes": nbytes,
        "quantized_parameters": quant,
        "sparse_parameters": sparse,
    }


def roofline(cost: Cost, spec: HardwareSpec, dtype: str, tokens: int) -> dict[str, Any]:
    """The roofline bound of one call on a target: it takes at least
    ``max(FLOPs / peak, bytes / bandwidth)``.

    ``bytes`` is the analysis's op-by-op traffic (reads and writes of every node; weights at
    their storage bytes), so intermediates a fused kernel keeps on chip are counted too: for
    decode the weights dominate and the bound is tight, for long prefills it is conservative.
    ``dtype`` picks the peak (the activation dtype; ``f32`` when the spec has no figure for it).
    ``tokens`` is the number of tokens one call produces (``batch x seq``).
    """
    peak_dtype = dtype if dtype in spec.peak_flops else "f32"
    peak = spec.peak(peak_dtype)
    nbytes = cost.bytes_read + cost.bytes_written
    t_mem = nbytes / spec.mem_bandwidth
    t_comp = cost.flops / peak
    t = max(t_mem, t_comp)
    return {
        "dtype": peak_dtype,
        "peak_flops": peak,
        "mem_bandwidth": spec.mem_bandwidth,
        "arithmetic_intensity": cost.flops / nbytes if nbytes else 0.0,
        "ridge_point": peak / spec.mem_bandwidth,
        "memory_ms": t_mem * 1e3,
        "compute_ms": t_comp * 1e3,
        "bound": "memory" if t_mem >= t_comp else "compute",
        "min_ms_per_call": t * 1e3,
        "max_tokens_per_s": tokens / t if t > 0 else float("inf"),
        "spec_source": spec.source,
    }
