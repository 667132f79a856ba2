"""Checking the functional simulator against the reference interpreter.

The accelerator computes in float32 with its own (fixed, documented) operation order, the
interpreter with torch's; neither is exact, so the two agree to rounding, not bit for bit. The
check follows torch's own accuracy rule (``torch._dynamo.utils.same``): both are compared with a
float64 evaluation of the *same quantized model* (weights ``(q - zero) * scale`` exactly, all
arithmetic in float64), and the simulator may be at most ``k`` times as far from it as the
float32 interpreter is (plus a tiny absolute floor). Per-operation bounds, derived in
docs/fpga.md, are tested separately (tests/fpga/test_numerics.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from llmc.fpga.funcsim import FuncRunner
from llmc.ir.graph import Graph
from llmc.ir.params import Param
from llmc.ir.parser import parse_graph
from llmc.ir.printer import print_graph
from llmc.runtime.lm import InterpLM


def float64_graph(graph: Graph) -> Graph:
    """A float64 copy of ``graph`` whose params are the exact dequantized float64 values."""
    text = print_graph(graph)
    for t in ("f32[", "f16[", "bf16["):
        text = text.replace(t, "f64[")
    text = text.replace('dtype = "f32"', 'dtype = "f64"')
    g = parse_graph(text)
    for name, p in graph.params.items():
        if p.format.quant is not None:
            q = p.format.quant
            codes = p.data["qvalue"].to(torch.float64)
            out_f, in_f = codes.shape
            gs = in_f if q.group == 0 else q.group
            c = codes.reshape(out_f, in_f // gs, gs)
            if "zero" in p.data:
                c = c - p.data["zero"].to(torch.float64).reshape(out_f, in_f // gs, 1)
            v = (c * p.data["scale"].to(torch.float64).reshape(out_f, in_f // gs, 1)).reshape(
                out_f, in_f
            )
        else:
            v = p.data["value"].to(torch.float64)
        g.params[name] = Param.dense(name, v)
    g.meta = dict(graph.meta)
    g.meta["kv_dtype"] = "f64"
    return g


@dataclass
class Agreement:
    """Max-abs errors against the float64 reference, per compared tensor."""

    sim_err: float
    interp_err: float
    sim_vs_interp: float
    exact_fraction: float
    argmax_agree: float

    def within(self, k: float = 4.0, atol: float = 1e-6) -> bool:
        return self.sim_err <= k * self.interp_err + atol


def compare_lm(
    graph: Graph, runner: FuncRunner, ids: np.ndarray, decode_steps: int = 3
) -> tuple[Agreement, dict[str, Any]]:
    """Prefill ``ids`` then greedy-decode on the simulator, the float32 interpreter and the
    float64 reference (teacher-forced on the reference's tokens); returns the worst errors."""
    lm32 = InterpLM(graph)
    lm64 = InterpLM(float64_graph(graph))
    ids_t = torch.tensor(np.array(ids), dtype=torch.int64)[None]
    pos_t = torch.arange(ids_t.shape[1])[None]
    p32, p64 = lm32.empty_past(1), lm64.empty_past(1)
    r32, p32 = lm32.forward(ids_t, pos_t, p32)
    r64, p64 = lm64.forward(ids_t, pos_t, p64)
    sim = runner.prefill(np.asarray(ids))
    outs = [(sim, r32[0].numpy(), r64[0].numpy())]
    tok = int(r64[0, -1].argmax())
    for step in range(decode_steps):
        pos = ids_t.shape[1] + step
        t = torch.tensor([[tok]])
        pp = torch.tensor([[pos]])
        r32, p32 = lm32.forward(t, pp, p32)
        r64, p64 = lm64.forward(t, pp, p64)
        outs.append((runner.decode(tok)[None], r32[0].numpy(), r64[0].numpy()))
        tok = int(r64[0, -1].argmax())
    se = max(float(np.abs(s - r).max()) for s, _, r in outs)
    ie = max(float(np.abs(i.astype(np.float64) - r).max()) for _, i, r in outs)
    sv = max(float(np.abs(s - i).max()) for s, i, _ in outs)
    ex = float(np.mean(np.concatenate([(s == i).reshape(-1) for s, i, _ in outs])))
    am = float(
        np.mean(np.concatenate([(s.argmax(-1) == r.argmax(-1)).reshape(-1) for s, _, r in outs]))
    )
    caches = {"kv_err": 0.0}
    for i, (k64, v64) in enumerate(p64):
        for name, ref in ((f"past_k_{i}", k64), (f"past_v_{i}", v64)):
            if name in runner.prog.cache_inputs:
                c = runner.cache(name)
                caches["kv_err"] = max(caches["kv_err"], float(np.abs(c - ref[0].numpy()).max()))
    return Agreement(se, ie, sv, ex, am), caches
