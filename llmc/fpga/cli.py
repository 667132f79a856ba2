"""``llmc simulate MODEL --target u280|vhk158 [--passes SPEC] [--prefill N] [--decode M] [--json]``."""

from __future__ import annotations

import argparse
import time
from typing import Any

from llmc.errors import TargetError
from llmc.fpga.arch import FpgaArch, builtin_names, load_arch


def skip_rate_arg(text: str) -> float:
    """``--skip-rate``: a fraction in [0, 1] (argparse type; one-line error otherwise)."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= v <= 1.0:  # NaN fails too
        raise argparse.ArgumentTypeError(
            f"{text} is out of range: a fraction of the decode FFN blocks, in [0, 1]"
        )
    return v


def resolve_arch(target: str, arch_file: str | None, sets: list[str]) -> FpgaArch:
    """The board for ``--target`` / ``--arch FILE`` with ``--set`` overrides."""
    if arch_file:
        return load_arch(arch_file, sets)
    from llmc.targets import get_target

    t = get_target(target)
    if t.kind != "fpga":
        raise TargetError(
            f"`llmc simulate` needs an FPGA target ({', '.join(builtin_names())}) or --arch FILE; "
            f"{target} is a {t.kind} target (use `llmc bench` on its artifacts)"
        )
    return load_arch(t.name, sets)


def simulate_command(a: argparse.Namespace) -> int:
    from llmc.compile import load, run_passes
    from llmc.console import emit_json, pass_options, stage
    from llmc.fpga.sim import simulate

    t0 = time.perf_counter()
    arch = resolve_arch(a.target, a.arch, a.set)
    loaded = load(a.model, allow_pickle=a.allow_pickle)
    t_load = time.perf_counter()
    report = run_passes(loaded.graph, a.passes, a.recipe, target=arch.name, options=pass_options(a))
    t_passes = time.perf_counter()
    rate = getattr(a, "skip_rate", None)
    with stage(f"simulating on {arch.name} (prefill {a.prefill}, decode {a.decode})"):
        rep = simulate(loaded.graph, arch, a.prefill, a.decode, fold=not a.no_fold, skip_rate=rate)
    t_end = time.perf_counter()
    timing = {
        "load": t_load - t0,
        "passes": t_passes - t_load,
        "simulate": t_end - t_passes,
        "total": t_end - t0,
    }
    if a.json:
        out: dict[str, Any] = rep.to_dict()
        out["model"] = loaded.name
        if rate is not None:
            out["ffn_skip_rate"] = rate
        out["passes"] = report
        out["timing_s"] = timing
        emit_json(out)
        return 0
    print(rep.summary())
    m = rep.memory
    print(
        f"  memory         {m['weights_gib']:.2f} GiB weights ({m['weights_in_ddr_gib']:.2f} in "
        f"DDR), {m['kv_cache_gib']:.2f} GiB KV cache; HBM {m['hbm_capacity_gib']:.1f} GiB"
    )
    for note in rep.notes:
        print(f"  note           {note}")
    print(f"  time           {timing['total']:.2f} s (simulation {timing['simulate']:.2f} s)")
    return 0
