"""Quick N:M pruning + symmetric round-to-nearest quantization, for tests and sweeps.

The real passes (``magnitude``, ``wanda``, ``rtn``, ``gptq`` in :mod:`llmc.passes`) also measure
the error they introduce, which takes tens of seconds even on ``tiny``. This helper writes the
same IR storage formats (codes in ``data["qvalue"]`` as int8, float32 scales ``[out, in/group]``,
``SparsitySpec(nm)``) in milliseconds, with no measurement, so simulator tests and design-space
sweeps can produce compressed models cheaply. Architecture-only (meta) params get the formats and
meta tensors of the right shapes.

Example::

    compress(graph, n=8, m=16, bits=4, group=128)           # every linear except lm_head
    compress(graph, bits=8, group=0, include=("*mlp*",))     # mixed precision per layer
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence

import torch

from llmc.ir.graph import Graph
from llmc.ir.params import Param, QuantSpec, SparsitySpec, StorageFormat


def linear_params(graph: Graph) -> list[Param]:
    out, seen = [], set()
    for _, n in graph.walk():
        if n.op == "linear":
            p = graph.param_of(n.inputs[1])
            if p is not None and p.name not in seen:
                seen.add(p.name)
                out.append(p)
    return out


def compress(
    graph: Graph,
    *,
    n: int = 0,
    m: int = 16,
    bits: int = 0,
    group: int = 0,
    include: Sequence[str] = ("*",),
    exclude: Sequence[str] = ("lm_head*",),
) -> list[str]:
    """Prune (``n`` of every ``m``; 0 = no pruning) and quantize (``bits``; 0 = keep float) the
    linear weights whose names match ``include`` and not ``exclude``; returns their names.
    Already-quantized params are skipped."""
    done = []
    for p in linear_params(graph):
        if not any(fnmatch.fnmatch(p.name, pat) for pat in include):
            continue
        if any(fnmatch.fnmatch(p.name, pat) for pat in exclude) or p.format.quant is not None:
            continue
        out_f, in_f = (int(d) for d in p.type.shape)
        g = group if group and in_f % group == 0 else (0 if not group else _divisor(in_f, group))
        sp = SparsitySpec("nm", n, m, n / m) if n else p.format.sparsity
        q = QuantSpec(bits, g) if bits else None
        if p.is_meta:
            data = dict(p.data)
            if q is not None:
                ng = 1 if g == 0 else in_f // g
                data = {
                    "qvalue": torch.empty(out_f, in_f, dtype=torch.int8, device="meta"),
                    "scale": torch.empty(out_f, ng, dtype=torch.float32, device="meta"),
                }
        else:
            w = p.value().detach().to(torch.float32)
            if n:
                grp = w.abs().reshape(out_f, in_f // m, m)
                keep = torch.zeros_like(grp, dtype=torch.bool)
                keep.scatter_(-1, grp.topk(n, dim=-1).indices, True)
                w = w * keep.reshape(out_f, in_f)
            if q is None:
                data = {"value": w.to(p.data["value"].dtype)}
            else:
                gs = in_f if g == 0 else g
                wg = w.reshape(out_f, in_f // gs, gs)
                qmax = 2 ** (bits - 1) - 1
                scale = (wg.abs().amax(-1) / qmax).clamp_min(1e-10)
                codes = torch.round(wg / scale[..., None]).clamp(-qmax, qmax).to(torch.int8)
                data = {"qvalue": codes.reshape(out_f, in_f), "scale": scale.to(torch.float32)}
        graph.params[p.name] = Param(p.name, p.type, StorageFormat(q, sp), data)
        done.append(p.name)
    return done


def _divisor(n: int, g: int) -> int:
    for d in range(g, 0, -1):
        if n % d == 0:
            return d
    return 0
