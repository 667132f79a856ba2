"""Routed vs dense-over-experts ``moe`` on the CPU: decode (one token) and a prefill.

Usage::

    TVM_NUM_THREADS=2 python bench/moe_decode.py             # writes bench/moe_decode.json
    python bench/moe_decode.py --layers 2 --repeats 3 --out /tmp/x.json

A stack of ``--layers`` Mixtral-shaped ``moe`` ops (each with its own router and experts, so the
weights stream from memory as in decode; default 8 experts, top-2, hidden 512, intermediate
1792, float32: 88 MB of expert weights per layer), compiled twice for ``cpu``: with the routed
rule (``cpu.moe.routed``, the default) and with the dense rule forced (``moe.dense``: every
expert on every row, weighted, in Relax's unscheduled matmul loops), and, to separate routing
from kernel quality, the routed kernels with ``top_k = E`` (``all_experts``: every expert's
weights read and computed by the same panel GEMMs; a different function, the same work as
dense over experts). Variants run interleaved (A B A B ...), ``--repeats`` rounds of
``--calls`` calls each; the JSON has every sample (ms per call), the medians, the ratio, the
expert-weight bytes each variant reads per decode token (the op's cost for routed, all ``E``
experts for dense: what the kernels load), the load average before and after, and the command.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import statistics
import sys
import time

import numpy as np
import torch


def _graph(layers: int, e: int, h: int, inter: int, k: int):
    from llmc.ir import GraphBuilder, TensorType, sym

    gen = torch.Generator().manual_seed(0)
    b = GraphBuilder("moe_stack")
    y = b.input("x", TensorType((sym("batch"), sym("seq"), h), "f32"))
    for i in range(layers):
        with b.scope(f"model.layers.{i}.mlp", "ffn"):
            r = b.param(f"l{i}.router", torch.randn(e, h, generator=gen))
            gu = b.param(f"l{i}.gate_up", torch.randn(e, 2 * inter, h, generator=gen) * 0.05)
            dn = b.param(f"l{i}.down", torch.randn(e, h, inter, generator=gen) * 0.05)
            y = b.emit("moe", y, r, gu, dn, top_k=k, normalize=True)
    b.output(y)
    g = b.finish()
    g.meta = {"num_layers": 0}
    return g


def _compile(g, dense: bool):
    import tvm
    from tvm.runtime.vm import VirtualMachine

    from llmc.backends import pipeline_for
    from llmc.backends import rules as R
    from llmc.backends.layouts import get_layout
    from llmc.backends.vm_plan import workspace_args
    from llmc.targets import get_target

    forced = R.Rule("moe.dense", "moe", R._moe)
    if dense:
        R.USER_RULES.insert(0, forced)
    try:
        t = get_target("cpu")
        ex, lowered, _ = pipeline_for(t).compile(g, t)
    finally:
        if dense:
            R.USER_RULES.remove(forced)
    vm = VirtualMachine(ex, tvm.cpu())
    wargs = {wa.name: wa for wa in lowered.weights}
    params = g.root().params

    def weights(entry: str) -> list:
        was = [wargs[nm] for nm in lowered.entry_weights[entry]]
        return [
            tvm.runtime.tensor(get_layout(wa.layout).transform(params[wa.param], "f32").numpy())
            for wa in was
        ] + workspace_args(vm, lowered.workspaces, entry)

    return vm, {e: weights(e) for e in ("decode", "prefill")}, dict(lowered.rules_used)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--top-k", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--inter", type=int, default=1792)
    ap.add_argument("--prefill", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--calls", type=int, default=20)
    ap.add_argument("--no-dense", action="store_true", help="skip the (slow) moe.dense variant")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "moe_decode.json"))
    a = ap.parse_args()

    import tvm

    from llmc.ir.ops_moe import MoeAttrs, _moe_cost
    from llmc.ir.types import TensorType

    g = _graph(a.layers, a.experts, a.hidden, a.inter, a.top_k)
    g_all = _graph(a.layers, a.experts, a.hidden, a.inter, a.experts)
    variants = {"routed": _compile(g, False)}
    if not a.no_dense:
        variants["dense"] = _compile(g, True)
    variants["all_experts"] = _compile(g_all, False)
    load_before = os.getloadavg()
    rng = np.random.default_rng(0)
    samples: dict[str, dict[str, list[float]]] = {
        v: {"decode": [], "prefill": []} for v in variants
    }
    for stage, rows, calls in (
        ("decode", 1, a.calls),
        ("prefill", a.prefill, max(a.calls // 10, 2)),
    ):
        xs = [
            tvm.runtime.tensor(rng.standard_normal((1, rows, a.hidden)).astype("float32"))
            for _ in range(calls)
        ]
        for vm, ws, _ in variants.values():  # warm up
            vm[stage](xs[0], *ws[stage])
        for _ in range(a.repeats):
            for name, (vm, ws, _) in variants.items():
                t0 = time.perf_counter()
                for x in xs:  # a fresh input per call: the routing changes as in real decode
                    vm[stage](x, *ws[stage])
                samples[name][stage].append((time.perf_counter() - t0) / calls * 1e3)
    load_after = os.getloadavg()
    med = {v: {s: statistics.median(x) for s, x in st.items()} for v, st in samples.items()}
    e, h, i = a.experts, a.hidden, a.inter
    expert_bytes = 4.0 * e * 3 * i * h  # gate_up + down, float32, per layer
    ins = [TensorType((1, 1, h), "f32"), TensorType((e, h), "f32"),
           TensorType((e, 2 * i, h), "f32"), TensorType((e, h, i), "f32")]  # fmt: skip
    nb = [4.0 * h, 4.0 * e * h, 4.0 * e * 2 * i * h, 4.0 * e * h * i]
    cost = _moe_cost(ins, ins[0], MoeAttrs(a.top_k), nb)
    routed_expert_bytes = cost.bytes_read - nb[0] - nb[1]
    result = {
        "what": "moe stack decode/prefill on the CPU, routed (cpu.moe.routed) vs dense (moe.dense)",
        "shape": {
            "layers": a.layers,
            "experts": e,
            "top_k": a.top_k,
            "hidden": h,
            "inter": i,
            "prefill_rows": a.prefill,
            "dtype": "f32",
        },  # fmt: skip
        "rules": {v: r for v, (_, _, r) in variants.items()},
        "ms_per_call_samples": samples,
        "ms_per_call_median": med,
        "dense_over_routed": {
            s: med["dense"][s] / med["routed"][s] for s in ("decode", "prefill") if "dense" in med
        },
        "all_experts_over_routed_per_round_median": {
            s: statistics.median(
                x / r for x, r in zip(samples["all_experts"][s], samples["routed"][s], strict=True)
            )
            for s in ("decode", "prefill")
        },
        "all_experts_over_routed": {
            s: med["all_experts"][s] / med["routed"][s] for s in ("decode", "prefill")
        },
        "expert_bytes_per_decode_token_per_layer": {
            "routed": routed_expert_bytes,
            "dense": expert_bytes,
            "ratio": routed_expert_bytes / expert_bytes,
        },
        "decode_GBps_expert_weights": {
            "routed": routed_expert_bytes * a.layers / (med["routed"]["decode"] * 1e-3) / 1e9,
            "all_experts": expert_bytes * a.layers / (med["all_experts"]["decode"] * 1e-3) / 1e9,
        },
        "threads": os.environ.get("TVM_NUM_THREADS", "default"),
        "loadavg_before": load_before,
        "loadavg_after": load_after,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": shlex.join([sys.executable, *sys.argv]),
    }
    with open(a.out, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps({k: result[k] for k in ("ms_per_call_median", "dense_over_routed",
                                             "all_experts_over_routed",
                                             "all_experts_over_routed_per_round_median",
                                             "expert_bytes_per_decode_token_per_layer",
                                             "loadavg_before", "loadavg_after")}))  # fmt: skip


if __name__ == "__main__":
    main()
