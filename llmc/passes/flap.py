"""FLAP-style structured pruning (An et al., AAAI 2024): remove FFN channels, shrink the matrices.

An *FFN group* is a linear ``down`` whose input is computed by elementwise ops only from the
outputs of private linears (``down(silu(gate(x)) * up(x))`` in Llama, ``fc2(gelu(fc1(x)))`` in
GPT-2). Channel ``j`` of the intermediate is scored by its *fluctuation*: the variance of ``down``'s
input channel ``j`` over the calibration tokens times ``‖W_down[:, j]‖²``. The lowest-scoring
``ratio`` of channels is removed in every layer (the same count everywhere, rounded so the kept
width is a multiple of ``align``, which keeps the exported model a plain Hugging Face config);
rows of the producers and columns of ``down`` are deleted, so the matrices really shrink. With
``compensate`` the removed channels' mean contribution ``W_down[:, removed] @ mean(X[removed])``
becomes a bias of ``down`` (FLAP's baseline bias compensation).

Scores come from the dense model's activations (one calibration sweep, then all rewrites).
Attention heads are not removed (with grouped-query attention a head can only go with its whole
KV group); architecture-only models get their shapes shrunk by keeping the first channels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llmc.ir.graph import Graph, Node
from llmc.ir.ops_quant import is_fusible
from llmc.ir.params import Param
from llmc.ir.types import TensorType
from llmc.passes.base import Pass, PassContext, PassOptionError
from llmc.passes.calibration import InputStats, run_layerwise
from llmc.passes.rewrite import retype
from llmc.passes.select import DEFAULT_EXCLUDE, Target, module_path, select_linears


@dataclass
class FFNGroup:
    down: Target
    producers: list[Param]

    @property
    def width(self) -> int:
        return self.down.in_features


def find_ffn_groups(graph: Graph, targets: list[Target]) -> list[FFNGroup]:
    users = graph.users()
    outputs = {id(v) for v in graph.outputs}
    groups = []
    for t in targets:
        seen: set[int] = {id(t.node)}
        producers: list[Param] = []
        stack = [t.node.inputs[0]]
        ok = True
        width = t.in_features
        while stack and ok:
            v = stack.pop()
            n = v.node
            if n is None or id(v) in outputs:
                ok = False
                break
            if id(n) in seen:
                continue
            seen.add(id(n))
            if n.op == "constant":
                continue
            if n.op == "linear" and len(n.inputs) == 2:
                p = graph.param_of(n.inputs[1])
                if p is None or p.format.quant is not None or int(p.type.shape[0]) != width:
                    ok = False
                    break
                producers.append(p)
                continue
            if not is_fusible(n.op) or (n.out.type.rank and n.out.type.shape[-1] != width):
                ok = False
                break
            stack.extend(n.inputs)
        if not ok or not producers:
            continue
        # every value inside the group must be read only inside it
        for gn in graph.nodes:
            if id(gn) in seen and gn is not t.node:
                if any(id(u) not in seen for u in users.get(gn.out, [])):
                    ok = False
        if ok:
            groups.append(FFNGroup(t, producers))
    return groups


def _numel(p: Param) -> int:
    n = 1
    for d in p.type.shape:
        n *= int(d)
    return n


def _shrink(p: Param, keep: torch.Tensor, dim: int) -> None:
    shape = list(int(d) for d in p.type.shape)
    shape[dim] = int(keep.numel())
    if p.is_meta:
        p.data = {"value": torch.empty(shape, dtype=p.data["value"].dtype, device="meta")}
    else:
        p.data = {"value": p.data["value"].index_select(dim, keep).contiguous()}
    p.type = TensorType(tuple(shape), p.type.dtype)
    p.invalidate()


@dataclass(frozen=True)
class FlapPrune(Pass):
    """Remove the lowest-fluctuation FFN channels (ratio per layer): shrinks gate/up/down."""

    name = "flap"
    ratio: float = 0.2
    align: int = 16
    compensate: bool = True
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = DEFAULT_EXCLUDE

    def check(self) -> None:
        if not 0.0 <= self.ratio < 1.0:
            raise PassOptionError(f"ratio must be in [0, 1), got {self.ratio}")
        if self.align < 1:
            raise PassOptionError(f"align must be >= 1, got {self.align}")

    def kept(self, width: int) -> int:
        k = round(width * (1.0 - self.ratio) / self.align) * self.align
        return max(min(k, width), min(self.align, width))

    def run(self, graph: Graph, ctx: PassContext) -> None:
        targets = select_linears(graph, self.include, self.exclude, pass_name=self.name)
        for t in targets:
            if t.param.format.quant is not None:
                raise PassOptionError(f"{t.path} is quantized; run flap before quantization")
        groups = find_ffn_groups(graph, targets)
        for g in groups:
            sp = g.down.param.format.sparsity
            if sp is not None and sp.kind == "nm" and self.kept(g.width) < g.width:
                raise PassOptionError(
                    f"{g.down.path} is {sp.n}:{sp.m} sparse; removing its input channels would "
                    "break the N:M groups: run flap before N:M pruning"
                )
        rep = ctx.report
        rep.set(ratio=self.ratio, ffn_groups=len(groups))
        if not groups:
            return
        bytes_before = sum(p.storage_bytes() for p in graph.params.values())
        numel_before = sum(_numel(p) for p in graph.params.values())
        meta = any(g.down.param.is_meta for g in groups)
        stats: dict[int, InputStats] = {}
        if not meta:
            info = run_layerwise(
                graph,
                ctx,
                [g.down.node for g in groups],
                lambda seg, st: stats.update({id(n): s for n, s in st.items()}),
                sequential=False,
            )
            rep.set(**info.to_dict())
        widths = {}
        for g in groups:
            width = g.width
            k = self.kept(width)
            wd = g.down.param
            mean_removed = None
            removed = torch.zeros(width, dtype=torch.bool)
            if meta:
                keep = torch.arange(k)
            else:
                st = stats[id(g.down.node)]
                w = wd.value().to(torch.float32)
                score = st.var.to(torch.float32) * w.pow(2).sum(0)
                keep = torch.sort(torch.topk(score, k).indices).values
                removed[:] = True
                removed[keep] = False
                if self.compensate:
                    mean_removed = w[:, removed] @ st.mean.to(torch.float32)[removed]
            for p in {id(p): p for p in g.producers}.values():
                _shrink(p, keep, 0)
            _shrink(wd, keep, 1)
            if mean_removed is not None and removed.any():
                self._add_bias(graph, g.down.node, mean_removed)
            widths[g.down.path] = (width, k)
            rep.layer(g.down.path, channels_before=width, channels_after=k)
        retype(graph)
        graph.prune_params()
        kept = {k for _, k in widths.values()}
        if len(kept) == 1 and "intermediate_size" in graph.meta:
            graph.meta["intermediate_size"] = kept.pop()
        bytes_after = sum(p.storage_bytes() for p in graph.params.values())
        rep.set(
            meta=meta,
            bytes_before=int(bytes_before),
            bytes_after=int(bytes_after),
            bytes_saved=int(bytes_before - bytes_after),
            channels_removed=int(sum((w - k) for w, k in widths.values())),
            params_removed=int(numel_before - sum(_numel(p) for p in graph.params.values())),
        )

    @staticmethod
    def _add_bias(graph: Graph, down: Node, delta: torch.Tensor) -> None:
        if len(down.inputs) == 3:
            bp = graph.param_of(down.inputs[2])
            if bp is not None:
                bp.data = {
                    "value": (bp.value().to(torch.float32) + delta).to(bp.data["value"].dtype)
                }
                bp.invalidate()
                return
        wp = graph.param_of(down.inputs[1])
        assert wp is not None
        name = module_path(wp.name) + ".bias"
        dtype = wp.data["value"].dtype
        graph.add_param(Param.dense(name, delta.to(dtype).contiguous()))
        node = graph.make_node(
            "param", (), {"name": name}, name=name, scope=down.scope, block=down.block
        )
        graph.insert_before(down, node)
        down.inputs = (*down.inputs, node.out)
